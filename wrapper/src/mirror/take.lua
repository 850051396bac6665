-- Take a grant out of a mirrored balance (it expired, renews or was voided): no consumption
-- can draw it afterwards. KEYS[1] balance, KEYS[2] grants, KEYS[3] grant order. ARGV[1] grant.
-- Returns the credits it held in the mirror, or -1 when it was not mirrored.
local remaining = redis.call('HGET', KEYS[2], ARGV[1])
if not remaining or redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('HDEL', KEYS[2], ARGV[1], ARGV[1] .. ':w')
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DECRBY', KEYS[1], tonumber(remaining))
return tonumber(remaining)
