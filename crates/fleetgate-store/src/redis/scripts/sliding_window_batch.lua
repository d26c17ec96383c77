-- Several sliding-window decisions on one key in one call (the driver's hot-key batch): scripts.rs
-- wraps sliding_window.lua's body as `decide_one(ARGV)` and appends this. Each cost in order,
-- all at one instant of server time (one TIME), each exactly what sliding_window.lua answers
-- for it were the calls run back to back at that instant. KEYS as sliding_window.lua's. ARGV:
-- window_us, cap, clock ('-' for the server's TIME; a number in tests), then one cost per
-- decision. Returns the decisions' rate_reply strings joined by single spaces; an error reply
-- of any decision is the whole call's.
local clock = nil
if ARGV[3] ~= '-' then clock = ARGV[3] end
local a = { ARGV[1], ARGV[2], '0', decision_now(clock) }
local out = {}
for i = 4, #ARGV do
  a[3] = ARGV[i]
  local r = decide_one(a)
  if type(r) == 'table' then return r end
  out[#out + 1] = r
end
return table.concat(out, ' ')
