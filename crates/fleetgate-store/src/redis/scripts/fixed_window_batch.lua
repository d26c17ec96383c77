-- Several fixed-window decisions on one key in one call (the driver's hot-key batch): each cost
-- in order, all at one instant of server time (one TIME, one HMGET, at most one write), each
-- exactly what fixed_window.lua answers for it were the calls run back to back at that
-- instant. KEYS[1]: the window's hash. ARGV: period_us, cap, clock ('-' for the server's TIME;
-- a number in tests), then one cost per decision. Returns the decisions' rate_reply strings
-- joined by single spaces (five numbers each).
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
local out = {}
for i = 4, #ARGV do
  local cost = tonumber(ARGV[i])
  if cost <= cap and count + cost <= cap then
    count = count + cost
    out[#out + 1] = rate_reply(1, cap - count, ends, 0, now)
  else
    local retry = ends
    if cost > cap then retry = period end
    out[#out + 1] = rate_reply(0, math.max(0, cap - count), ends, retry, now)
  end
end
if count > start then
  redis.call('HSET', KEYS[1], 'w', string.format('%.0f', window), 'n', string.format('%.0f', count))
  redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil(ends / 1000)))
end
return table.concat(out, ' ')
