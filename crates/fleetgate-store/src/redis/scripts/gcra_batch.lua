-- Several GCRA decisions on one key in one call (the driver's hot-key batch): each cost in
-- order, all at one instant of server time (one TIME, one GET, at most one SET), recorded
-- exactly as gcra.lua records them were the calls run back to back at that instant. KEYS[1]:
-- the TAT. ARGV: interval_us, burst, period_us, clock ('-' for the server's TIME; a number in
-- tests), then one cost per decision. Returns "now_us tat_us", the instant and the TAT the
-- batch started from (at least now): the driver derives each decision from them with the pure
-- function this mirrors (decide_many in src/algo/gcra.rs), so no reply is formatted per
-- decision (string.format was about three quarters of a decision's cost here).
local clock = nil
if ARGV[4] ~= '-' then clock = ARGV[4] end
local now = decision_now(clock)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
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
for i = 5, #ARGV do
  local cost = tonumber(ARGV[i])
  if cost <= burst then
    local new_tat = tat + cost * interval
    if new_tat <= horizon then tat = new_tat end
  end
end
if tat > start then
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.max(1, math.ceil((tat - now) / 1000)))
end
return string.format('%.0f %.0f', now, start)
