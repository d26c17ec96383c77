-- Several GCRA decisions on one key in one call (the driver's hot-key batch): each cost in
-- order, all at one instant of server time (one TIME, one GET, at most one SET), each exactly
-- what gcra.lua answers for it were the calls run back to back at that instant. KEYS[1]: the
-- TAT. ARGV: interval_us, burst, period_us, clock ('-' for the server's TIME; a number in
-- tests), then one cost per decision. Returns the decisions' rate_reply strings joined by
-- single spaces (five numbers each).
local clock = nil
if ARGV[4] ~= '-' then clock = ARGV[4] end
local now = decision_now(clock)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local raw = redis.call('GET', KEYS[1])
local tat = now
if raw then
  tat = tonumber(raw)
  if not tat then
    return redis.error_reply('WRONGTYPE fleetgate: gcra key holds a non-numeric value')
  end
  if tat < now then tat = now end
end
local start = tat
local horizon = now + interval * burst
local out = {}
for i = 5, #ARGV do
  local cost = tonumber(ARGV[i])
  local new_tat = tat + cost * interval
  if cost > burst then
    out[#out + 1] = rate_reply(0, math.max(0, math.floor((horizon - tat) / interval)), tat - now, period, now)
  elseif new_tat <= horizon then
    tat = new_tat
    out[#out + 1] = rate_reply(1, math.floor((horizon - new_tat) / interval), new_tat - now, 0, now)
  else
    out[#out + 1] = rate_reply(0, math.max(0, math.floor((horizon - tat) / interval)), tat - now, new_tat - horizon, now)
  end
end
if tat > start then
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.max(1, math.ceil((tat - now) / 1000)))
end
return table.concat(out, ' ')
