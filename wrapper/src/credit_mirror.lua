-- Reset a mirrored balance to the ledger's figure, unless it changed since it was read.
-- KEYS[1] balance, KEYS[2] applied allocation ids.
-- ARGV[1] the balance read ('' when missing), ARGV[2] the target, ARGV[3..] allocation ids.
-- Returns 1 when corrected, 0 when the mirror moved meanwhile (try again).
local now = redis.call('GET', KEYS[1]) or ''
if now ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2])
for i = 3, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
return 1
