-- Concurrency permit: KEYS[1] is a sorted set of permit ids scored by lease expiry (µs).
-- ARGV: permit id, max, lease_us. Returns {granted, in_use}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local max = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
local n = redis.call('ZCARD', KEYS[1])
if held or n < max then
  redis.call('ZADD', KEYS[1], string.format('%.0f', now + lease), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil(lease / 1000)))
  if not held then n = n + 1 end
  return {1, n}
end
return {0, n}
