-- Prepended to the sliding_window, refund, reserve and give_back scripts by scripts.rs: the
-- sliding log, mirroring SlidingLog in src/algo/sliding_window.rs. A log is a list of
-- "time_us:cost" entries ordered by time, one per instant; its total lives in a second key.
local function sw_parse(e)
  local s = string.find(e, ':', 1, true)
  local et = s and tonumber(string.sub(e, 1, s - 1))
  local ec = s and tonumber(string.sub(e, s + 1))
  if not et or not ec then
    error('WRONGTYPE fleetgate: sliding window log holds a malformed entry')
  end
  return et, ec
end
local function sw_entry(t, c)
  return string.format('%.0f:%.0f', t, c)
end
-- The log's total (0 for none), or nil when the key holds something else.
local function sw_total(totalkey)
  return tonumber(redis.call('GET', totalkey) or '0')
end
-- Drops the entries that have left the window at `now`; returns the total left.
local function sw_evict(log, total, now, window)
  while true do
    local head = redis.call('LINDEX', log, 0)
    if not head then break end
    local ht, hc = sw_parse(head)
    if ht + window > now then break end
    redis.call('LPOP', log)
    total = total - hc
  end
  if redis.call('LLEN', log) == 0 then total = 0 end
  return total
end
-- Logs `cost` units at `at` in time order (merged into an entry of the same instant). An exact
-- charge usually goes last; only lease entries (at their lease's end) can be newer, so the
-- place is searched from the newest, 32 entries at a time.
local function sw_log(log, at, cost)
  local tail = redis.call('LINDEX', log, -1)
  if not tail then
    redis.call('RPUSH', log, sw_entry(at, cost))
    return
  end
  local tt, tc = sw_parse(tail)
  if tt < at then
    redis.call('RPUSH', log, sw_entry(at, cost))
    return
  end
  if tt == at then
    redis.call('LSET', log, -1, sw_entry(at, tc + cost))
    return
  end
  local len = redis.call('LLEN', log)
  local stop = -2
  while stop >= -len do
    local first = math.max(stop - 31, -len)
    local chunk = redis.call('LRANGE', log, first, stop)
    for j = #chunk, 1, -1 do
      local et, ec = sw_parse(chunk[j])
      if et == at then
        redis.call('LSET', log, first + j - 1, sw_entry(at, ec + cost))
        return
      end
      if et < at then
        -- The entry's text is unique (one entry per instant).
        redis.call('LINSERT', log, 'AFTER', chunk[j], sw_entry(at, cost))
        return
      end
    end
    stop = first - 1
  end
  redis.call('LPUSH', log, sw_entry(at, cost))
end
-- Stores `total` beside the log and gives both the log's lifetime (until its newest entry
-- leaves the window), or deletes both when the log is empty. Returns that lifetime in µs.
local function sw_store(log, totalkey, total, now, window)
  local reset = 0
  local newest = redis.call('LINDEX', log, -1)
  if newest then reset = sw_parse(newest) + window - now end
  if reset > 0 then
    local ttl = math.max(1, math.ceil(reset / 1000))
    redis.call('PEXPIRE', log, ttl)
    redis.call('SET', totalkey, string.format('%.0f', total), 'PX', ttl)
  else
    redis.call('DEL', log, totalkey)
    reset = 0
  end
  return reset
end
-- Takes up to `cost` units from the entry logged at `at` (a refund or a give-back). Returns 1
-- if the log changed, else 0. Entries are ordered by time; searched from the newest.
local function sw_take(log, totalkey, at, cost)
  local len = redis.call('LLEN', log)
  local stop = -1
  while stop >= -len do
    local first = math.max(stop - 31, -len)
    local chunk = redis.call('LRANGE', log, first, stop)
    for j = #chunk, 1, -1 do
      local e = chunk[j]
      local et, ec = sw_parse(e)
      if et < at then return 0 end
      if et == at then
        local give = math.min(cost, ec)
        if give <= 0 then return 0 end
        if ec > give then
          redis.call('LSET', log, first + j - 1, sw_entry(et, ec - give))
        else
          -- The entry's text is unique (one entry per instant).
          redis.call('LREM', log, -1, e)
        end
        local total = tonumber(redis.call('GET', totalkey) or '0') or 0
        total = math.max(0, total - give)
        -- The total lives as long as the log (an emptied log is gone, and so is its total).
        local ttl = redis.call('PTTL', log)
        if ttl == -2 then
          redis.call('DEL', totalkey)
        elseif ttl > 0 then
          redis.call('SET', totalkey, string.format('%.0f', total), 'PX', ttl)
        else
          redis.call('SET', totalkey, string.format('%.0f', total), 'KEEPTTL')
        end
        return 1
      end
    end
    stop = first - 1
  end
  return 0
end
