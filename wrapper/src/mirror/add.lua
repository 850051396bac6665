-- Set grants of a mirrored balance (a new application grant, a renewed one), once per change.
-- KEYS[1] balance, KEYS[2] applied change ids, KEYS[3] grants, KEYS[4] grant order.
-- ARGV[1] the change (ledger entry) id, then per grant five values: id, remaining,
-- effective ms, expiry ms (0: none), order score.
-- Returns 1 if applied, 0 if this change was applied before, 2 if nothing is mirrored (the
-- reconciliation provisions mirrors).
if redis.call('EXISTS', KEYS[1]) == 0 then return 2 end
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
for i = 2, #ARGV, 5 do
  local id = ARGV[i]
  local before = tonumber(redis.call('HGET', KEYS[3], id) or '0')
  local now = tonumber(ARGV[i + 1])
  redis.call('HSET', KEYS[3], id, now, id .. ':w', ARGV[i + 2] .. ' ' .. ARGV[i + 3])
  redis.call('ZADD', KEYS[4], ARGV[i + 4], id)
  redis.call('INCRBY', KEYS[1], now - before)
end
return 1
