-- Several fixed-window decisions on one key in one call (the driver's hot-key batch): each cost
-- in order, all at one instant of server time (one TIME, one HMGET, at most one write),
-- recorded exactly as fixed_window.lua records them were the calls run back to back at that
-- instant. KEYS[1]: the window's hash. ARGV: period_us, cap, clock ('-' for the server's TIME;
-- a number in tests), then one cost per decision. Returns "now_us count", the instant and the
-- current window's count the batch started from: the driver derives each decision from them
-- with the pure function this mirrors (decide_many in src/algo/fixed_window.rs).
local clock = nil
if ARGV[3] ~= '-' then clock = ARGV[3] end
local now = decision_now(clock)
local period = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local window = math.floor(now / period)
local vals = redis.call('HMGET', KEYS[1], 'w', 'n')
local count = 0
if tonumber(vals[1]) == window then
  count = tonumber(vals[2]) or 0
end
local start = count
local ends = (window + 1) * period - now
for i = 4, #ARGV do
  local cost = tonumber(ARGV[i])
  if cost <= cap and count + cost <= cap then
    count = count + cost
  end
end
if count > start then
  redis.call('HSET', KEYS[1], 'w', string.format('%.0f', window), 'n', string.format('%.0f', count))
  redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil(ends / 1000)))
end
return string.format('%.0f %.0f', now, start)
