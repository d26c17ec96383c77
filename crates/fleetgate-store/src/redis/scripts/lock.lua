-- Lease lock with fencing: KEYS[1] holder (PX ttl), KEYS[2] fencing counter (kept 7 days).
-- ARGV: owner, ttl_ms. Returns {1, fence} when held by owner after the call, else {0, 0}.
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return {0, 0} end
local fence
if cur then
  fence = tonumber(redis.call('GET', KEYS[2]) or '0')
else
  fence = redis.call('INCR', KEYS[2])
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PEXPIRE', KEYS[2], 604800000)
return {1, fence}
