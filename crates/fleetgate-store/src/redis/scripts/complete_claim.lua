-- Completes a claim: sets KEYS[1] to ARGV[2] for ARGV[3] ms only if it still holds ARGV[1]
-- (the holder's claim value). Returns 1 if replaced.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
