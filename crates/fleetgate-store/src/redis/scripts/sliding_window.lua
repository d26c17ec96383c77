-- Exact sliding log: mirrors decide in src/algo/sliding_window.rs (helpers in sliding_log.lua).
-- KEYS[1]: list of "time_us:cost" entries ordered by time, one per instant. KEYS[2]: their
-- total. ARGV: window_us, capacity, cost[, now_us]. Returns "allowed remaining reset_us
-- retry_us now_us" (rate_reply in now.lua); now_us is the entry's time, the refund receipt.
-- The now_us argument is for tests only (tests/differential.rs): the driver never sends it.
local now = decision_now(ARGV[4])
local window = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local total = sw_total(KEYS[2])
if not total then
  return redis.error_reply('WRONGTYPE fleetgate: sliding window total is not numeric')
end
total = sw_evict(KEYS[1], total, now, window)
local allowed = cost <= cap and total + cost <= cap
local retry = 0
if allowed then
  if cost > 0 then
    sw_log(KEYS[1], now, cost)
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
      local et, ec = sw_parse(e)
      freed = freed + ec
      if freed >= need then
        retry = et + window - now
        break
      end
    end
    start = start + 32
  end
end
local reset = sw_store(KEYS[1], KEYS[2], total, now, window)
return rate_reply(allowed and 1 or 0, math.max(0, cap - total), reset, retry, now)
