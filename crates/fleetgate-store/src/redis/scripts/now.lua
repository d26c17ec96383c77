-- Prepended to the rate, refund and lease scripts by scripts.rs: the decision's time in
-- microseconds of server time, or the test-only clock argument when a test passes one
-- (tests/differential.rs; the driver never sends it); and the rate scripts' reply.
local function decision_now(test_now)
  if test_now then
    return tonumber(test_now)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
-- A rate decision as one bulk string "allowed remaining reset_us retry_us now_us" (whole
-- numbers, space-separated): one RESP value to parse instead of an array of five, which is most
-- of what a reply costs the driver (redis-rs's parser works per value).
local function rate_reply(allowed, remaining, reset, retry, at)
  return string.format('%.0f %.0f %.0f %.0f %.0f', allowed, remaining, reset, retry, at)
end
