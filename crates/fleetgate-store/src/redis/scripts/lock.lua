-- Lease lock with fencing: KEYS[1] holder (PX ttl), KEYS[2] fencing counter.
-- ARGV: owner, ttl_ms. Returns {1, fence} when held by owner after the call, else {0, 0}.
-- The fencing counter is the one key fleetgate writes without a TTL: tokens must only grow, and
-- a counter that expired would restart at 1 below tokens a stale holder may still present. It is
-- one small integer per lock name (lock names are a fixed set, not per request).
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return {0, 0} end
local fence
if cur then
  fence = tonumber(redis.call('GET', KEYS[2]) or '0')
else
  fence = redis.call('INCR', KEYS[2])
  -- INCR keeps a TTL that an earlier version set on the counter (7 days): drop it.
  redis.call('PERSIST', KEYS[2])
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, fence}
