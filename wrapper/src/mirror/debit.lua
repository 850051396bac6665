-- Take a direct-path consumption's draws from a mirrored balance too, so the fast path does
-- not spend what the ledger has charged already. KEYS[1] balance, KEYS[2] grants.
-- ARGV: grant id, credits, grant id, credits, ... Each grant gives what it holds at most.
-- Returns the credits taken, or -1 when nothing is mirrored.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local total = 0
for i = 1, #ARGV, 2 do
  local held = tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '0')
  local take = math.min(held, tonumber(ARGV[i + 1]))
  if take > 0 then
    redis.call('HINCRBY', KEYS[2], ARGV[i], -take)
    total = total + take
  end
end
redis.call('DECRBY', KEYS[1], total)
return total
