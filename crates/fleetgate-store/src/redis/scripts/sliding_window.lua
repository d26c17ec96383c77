-- Exact sliding log: mirrors decide in src/algo/sliding_window.rs.
-- KEYS[1]: list of "time_us:cost" entries, oldest first, one per instant. KEYS[2]: their total.
-- ARGV: window_us, capacity, cost[, now_us]. Returns {allowed, remaining, reset_us, retry_us,
-- now_us}; now_us is the entry's time (the clock clamped to the newest entry), the refund
-- receipt. The now_us argument is for tests only (tests/differential.rs): the driver never
-- sends it.
local now = decision_now(ARGV[4])
local window = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local function parse(e)
  local s = string.find(e, ':', 1, true)
  local et = s and tonumber(string.sub(e, 1, s - 1))
  local ec = s and tonumber(string.sub(e, s + 1))
  if not et or not ec then
    error('WRONGTYPE fleetgate: sliding window log holds a malformed entry')
  end
  return et, ec
end
local total = tonumber(redis.call('GET', KEYS[2]) or '0')
if not total then
  return redis.error_reply('WRONGTYPE fleetgate: sliding window total is not numeric')
end
local tail = redis.call('LINDEX', KEYS[1], -1)
if tail then
  local tt = parse(tail)
  if tt > now then now = tt end
end
while true do
  local head = redis.call('LINDEX', KEYS[1], 0)
  if not head then break end
  local ht, hc = parse(head)
  if ht + window > now then break end
  redis.call('LPOP', KEYS[1])
  total = total - hc
end
if redis.call('LLEN', KEYS[1]) == 0 then total = 0 end
local allowed = cost <= cap and total + cost <= cap
local retry = 0
if allowed then
  if cost > 0 then
    local last = redis.call('LINDEX', KEYS[1], -1)
    local lt, lc
    if last then lt, lc = parse(last) end
    if lt == now then
      redis.call('LSET', KEYS[1], -1, string.format('%.0f:%.0f', now, lc + cost))
    else
      redis.call('RPUSH', KEYS[1], string.format('%.0f:%.0f', now, cost))
    end
    total = total + cost
  end
elseif cost > cap then
  retry = window
else
  local need = total + cost - cap
  local freed = 0
  local start = 0
  while retry == 0 do
    local chunk = redis.call('LRANGE', KEYS[1], start, start + 31)
    if #chunk == 0 then break end
    for _, e in ipairs(chunk) do
      local et, ec = parse(e)
      freed = freed + ec
      if freed >= need then
        retry = et + window - now
        break
      end
    end
    start = start + 32
  end
end
local reset = 0
local newest = redis.call('LINDEX', KEYS[1], -1)
if newest then reset = parse(newest) + window - now end
if reset > 0 then
  local ttl = math.max(1, math.ceil(reset / 1000))
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('SET', KEYS[2], string.format('%.0f', total), 'PX', ttl)
else
  redis.call('DEL', KEYS[1], KEYS[2])
end
return {allowed and 1 or 0, math.max(0, cap - total), reset, retry, now}
