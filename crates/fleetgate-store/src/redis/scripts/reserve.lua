-- Lease mode: reserves up to `want` units in one step; mirrors reserve in src/algo/gcra.rs,
-- src/algo/fixed_window.rs and src/algo/sliding_window.rs (see there, and docs/store.md
-- "Lease mode", for why the fleet never admits more than the limit wherever in the lease the
-- units are spent).
-- KEYS[1]: the limit's state (gcra: the TAT; fixed_window: hash {w, n}; sliding_window: the
-- log), KEYS[2]: sliding_window only, the log's total.
-- ARGV: algorithm (gcra | fixed_window | sliding_window), interval_us (gcra) or period_us,
-- capacity, want, lease_us[, now_us]. Returns {granted, lease_until_us, remaining, reset_us,
-- now_us, mark} (mark: gcra the TAT left, fixed_window the window index, sliding_window the
-- log entry's time; the give-back receipt).
-- now_us is for tests only (tests/lease_differential.rs): the driver never sends it.
local now = decision_now(ARGV[6])
local algorithm = ARGV[1]
local param = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local lease = tonumber(ARGV[5])
if algorithm == 'gcra' then
  local raw = redis.call('GET', KEYS[1])
  local tat = now
  if raw then
    tat = tonumber(raw)
    if not tat then
      return redis.error_reply('WRONGTYPE fleetgate: gcra key holds a non-numeric value')
    end
    if tat < now then tat = now end
  end
  local capacity = param * cap
  if lease > capacity then lease = capacity end
  local horizon = now + capacity
  local ends = now + lease
  -- Charged as taken now, refilling only from the lease's end.
  local base = math.max(tat, ends)
  local room = math.max(0, math.floor((horizon - base) / param))
  local granted = math.min(want, room)
  local after = tat
  if granted > 0 then
    after = base + granted * param
    redis.call('SET', KEYS[1], string.format('%.0f', after), 'PX', math.max(1, math.ceil((after - now) / 1000)))
  end
  return {granted, ends, math.max(0, math.floor((horizon - after) / param)), after - now, now, after}
elseif algorithm == 'fixed_window' then
  local window = math.floor(now / param)
  local vals = redis.call('HMGET', KEYS[1], 'w', 'n')
  local count = 0
  if tonumber(vals[1]) == window then
    count = tonumber(vals[2]) or 0
  end
  local ends = (window + 1) * param - now
  if lease > ends then lease = ends end
  local granted = math.min(want, math.max(0, cap - count))
  if granted > 0 then
    redis.call('HSET', KEYS[1], 'w', string.format('%.0f', window), 'n', string.format('%.0f', count + granted))
    redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil(ends / 1000)))
  end
  return {granted, now + lease, math.max(0, cap - count - granted), ends, now, window}
elseif algorithm == 'sliding_window' then
  -- Logged at the lease's end (sliding_log.lua): counted until then plus the window.
  local total = sw_total(KEYS[2])
  if not total then
    return redis.error_reply('WRONGTYPE fleetgate: sliding window total is not numeric')
  end
  total = sw_evict(KEYS[1], total, now, param)
  if lease > param then lease = param end
  local ends = now + lease
  local granted = math.min(want, math.max(0, cap - total))
  if granted > 0 then
    sw_log(KEYS[1], ends, granted)
    total = total + granted
  end
  local reset = sw_store(KEYS[1], KEYS[2], total, now, param)
  return {granted, ends, math.max(0, cap - total), reset, now, ends}
end
return redis.error_reply('fleetgate: ' .. tostring(algorithm) .. ' limits cannot lease units')
