-- Fixed window: mirrors decide in src/algo/fixed_window.rs. KEYS[1]: hash {w = window index,
-- n = count}; windows are aligned to the Unix epoch, as the in-process driver's are.
-- ARGV: period_us, capacity, cost[, now_us]. Returns "allowed remaining reset_us retry_us
-- now_us" (rate_reply in now.lua). now_us is for tests only (tests/differential.rs): the driver never sends it.
local now = decision_now(ARGV[4])
local period = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local window = math.floor(now / period)
local vals = redis.call('HMGET', KEYS[1], 'w', 'n')
local count = 0
if tonumber(vals[1]) == window then
  count = tonumber(vals[2]) or 0
end
local ends = (window + 1) * period - now
if cost <= cap and count + cost <= cap then
  if cost > 0 then
    redis.call('HSET', KEYS[1], 'w', string.format('%.0f', window), 'n', string.format('%.0f', count + cost))
    redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil(ends / 1000)))
  end
  return rate_reply(1, cap - count - cost, ends, 0, now)
end
local retry = ends
if cost > cap then retry = period end
return rate_reply(0, math.max(0, cap - count), ends, retry, now)
