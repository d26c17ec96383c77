-- Prepended to the rate and refund scripts by scripts.rs: the decision's time in microseconds
-- of server time, or the test-only clock argument when a test passes one
-- (tests/differential.rs; the driver never sends it).
local function decision_now(test_now)
  if test_now then
    return tonumber(test_now)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
