-- Reset a mirrored balance to the ledger's grants, unless the mirror changed since it was read.
-- KEYS[1] balance, KEYS[2] applied change ids, KEYS[3] grants, KEYS[4] grant order.
-- ARGV[1] the balance read ('' when missing), ARGV[2] the target balance, ARGV[3] how many
-- change ids follow, the change ids, then per grant five values: id, remaining, effective ms,
-- expiry ms (0: none), order score.
-- Returns 1 when corrected, 0 when the mirror moved meanwhile (try again).
local now = redis.call('GET', KEYS[1]) or ''
if now ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
redis.call('SET', KEYS[1], ARGV[2])
local changes = tonumber(ARGV[3])
for i = 4, 3 + changes do redis.call('SADD', KEYS[2], ARGV[i]) end
for i = 4 + changes, #ARGV, 5 do
  local id = ARGV[i]
  redis.call('HSET', KEYS[3], id, ARGV[i + 1], id .. ':w', ARGV[i + 2] .. ' ' .. ARGV[i + 3])
  redis.call('ZADD', KEYS[4], ARGV[i + 4], id)
end
return 1
