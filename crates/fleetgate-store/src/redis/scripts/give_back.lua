-- Lease mode: gives back unused units of a reservation; mirrors give_back in src/algo/gcra.rs,
-- src/algo/fixed_window.rs and src/algo/sliding_window.rs (never more generous than a
-- reservation of the units spent).
-- KEYS[1]: the limit's state; KEYS[2]: sliding_window only, the log's total. ARGV: algorithm
-- (gcra | fixed_window | sliding_window), interval_us (gcra) or period_us, unused, granted,
-- mark[, now_us]. Returns 1 if the state changed, else 0.
-- now_us is for tests only (tests/lease_differential.rs): the driver never sends it.
local now = decision_now(ARGV[6])
local algorithm = ARGV[1]
local param = tonumber(ARGV[2])
local unused = tonumber(ARGV[3])
local granted = tonumber(ARGV[4])
local mark = tonumber(ARGV[5])
if algorithm == 'gcra' then
  local raw = redis.call('GET', KEYS[1])
  if not raw then return 0 end
  local tat = tonumber(raw)
  if not tat then
    return redis.error_reply('WRONGTYPE fleetgate: gcra key holds a non-numeric value')
  end
  -- Only while nothing else was charged since the reservation (the TAT is still its mark).
  if tat <= now or tat ~= mark then return 0 end
  local give = math.min(unused, granted)
  if give <= 0 then return 0 end
  local new_tat = math.max(tat - give * param, now)
  if new_tat > now then
    redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.max(1, math.ceil((new_tat - now) / 1000)))
  else
    redis.call('DEL', KEYS[1])
  end
  return 1
elseif algorithm == 'fixed_window' then
  local vals = redis.call('HMGET', KEYS[1], 'w', 'n')
  local count = tonumber(vals[2])
  if not count or tonumber(vals[1]) ~= mark then return 0 end
  local give = math.min(unused, granted, count)
  if give <= 0 then return 0 end
  -- HSET keeps the key's TTL (the window's end).
  redis.call('HSET', KEYS[1], 'n', string.format('%.0f', count - give))
  return 1
elseif algorithm == 'sliding_window' then
  -- From the entry the reservation was logged in (at its lease's end).
  return sw_take(KEYS[1], KEYS[2], mark, math.min(unused, granted))
end
return redis.error_reply('fleetgate: ' .. tostring(algorithm) .. ' limits cannot lease units')
