-- GCRA: mirrors decide in src/algo/gcra.rs. KEYS[1]: the TAT in microseconds of server time.
-- ARGV: interval_us, burst, cost, period_us[, now_us]. Returns "allowed remaining reset_us
-- retry_us now_us" (rate_reply in now.lua); now_us is the decision's time (an admitted
-- charge's refund receipt).
-- now_us is for tests only (tests/differential.rs): the driver never sends it, so the server's
-- TIME decides.
local now = decision_now(ARGV[5])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local raw = redis.call('GET', KEYS[1])
local tat = now
if raw then
  tat = tonumber(raw)
  if not tat then
    return redis.error_reply('WRONGTYPE fleetgate: gcra key holds a non-numeric value')
  end
  if tat < now then tat = now end
end
local horizon = now + interval * burst
if cost > burst then
  return rate_reply(0, math.max(0, math.floor((horizon - tat) / interval)), tat - now, tonumber(ARGV[4]), now)
end
local new_tat = tat + cost * interval
if new_tat <= horizon then
  if cost > 0 then
    redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.max(1, math.ceil((new_tat - now) / 1000)))
  end
  return rate_reply(1, math.floor((horizon - new_tat) / interval), new_tat - now, 0, now)
end
-- The TAT can lie beyond the horizon (server clock stepped back, or a larger limit's state).
return rate_reply(0, math.max(0, math.floor((horizon - tat) / interval)), tat - now, new_tat - horizon, now)
