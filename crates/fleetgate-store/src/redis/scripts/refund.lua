-- Refund: gives back one admitted charge; mirrors refund in src/algo/gcra.rs,
-- src/algo/sliding_window.rs and src/algo/fixed_window.rs (see there for why each is never more
-- generous than if the charge had never been made).
-- KEYS[1]: the limit's state; KEYS[2]: sliding_window only, the log's total.
-- ARGV: algorithm (gcra | sliding_window | fixed_window), interval_us (gcra) or period_us, and
-- the charge's cost and at_us[, now_us]. Returns 1 if the state changed, else 0.
-- now_us is for tests only (tests/differential.rs): the driver never sends it.
local now = decision_now(ARGV[5])
local algorithm = ARGV[1]
local param = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local at = tonumber(ARGV[4])
if algorithm == 'gcra' then
  local raw = redis.call('GET', KEYS[1])
  if not raw then return 0 end
  local tat = tonumber(raw)
  if not tat then
    return redis.error_reply('WRONGTYPE fleetgate: gcra key holds a non-numeric value')
  end
  if tat <= now then return 0 end
  -- The charge's units less the refill time since it was made (see refund in gcra.rs).
  local units = cost * param
  local owed = math.min(units, at + units - now)
  if owed <= 0 then return 0 end
  local new_tat = math.max(tat - owed, now)
  if new_tat > now then
    redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.max(1, math.ceil((new_tat - now) / 1000)))
  else
    redis.call('DEL', KEYS[1])
  end
  return 1
elseif algorithm == 'fixed_window' then
  local vals = redis.call('HMGET', KEYS[1], 'w', 'n')
  local count = tonumber(vals[2])
  if not count or tonumber(vals[1]) ~= math.floor(at / param) then return 0 end
  local give = math.min(cost, count)
  if give <= 0 then return 0 end
  -- HSET keeps the key's TTL (the window's end).
  redis.call('HSET', KEYS[1], 'n', string.format('%.0f', count - give))
  return 1
elseif algorithm == 'sliding_window' then
  -- The entry logged at the charge's time (sw_take in sliding_log.lua).
  return sw_take(KEYS[1], KEYS[2], at, cost)
end
return redis.error_reply('fleetgate: refund of unknown algorithm ' .. tostring(algorithm))
