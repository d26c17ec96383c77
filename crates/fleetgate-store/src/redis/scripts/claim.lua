-- Claim once: set KEYS[1] to ARGV[1] for ARGV[2] ms if absent. Returns {1} or {0, held value}.
local held = redis.call('GET', KEYS[1])
if held then return {0, held} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1}
