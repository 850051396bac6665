-- Raise a mirrored balance by an allocation, once per allocation id.
-- KEYS[1] balance, KEYS[2] set of applied allocation ids. ARGV: allocationId, amount.
-- Returns 1 if applied, 0 if this allocation was applied before.
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('INCRBY', KEYS[1], tonumber(ARGV[2]))
return 1
