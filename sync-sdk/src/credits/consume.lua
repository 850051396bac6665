-- Fast-path consumption against a mirrored allocation, atomically:
-- a repeated operation id returns the first reply; otherwise the operation is priced from the
-- price table the wrapper writes, the balance is checked and decremented and a
-- credit.consumed entry is appended to the partition's credit stream.
-- KEYS[1] balance, KEYS[2] operation record, KEYS[3] credit stream, KEYS[4] price table
-- (one hash tag: one slot).
-- ARGV: operationId, quantity, tenantId, application, operationCode, record TTL (seconds),
-- userId (the user the app acted for; empty when it did not say).
-- Returns {status, text}: 0 charged (reply JSON), 1 replayed (reply JSON),
-- 2 insufficient (balance), 3 not mirrored, 4 not priced here (no price, or over the limit):
-- the caller asks the wrapper, which prices authoritatively.
local prior = redis.call('GET', KEYS[2])
if prior then return {1, prior} end
local balance = redis.call('GET', KEYS[1])
if not balance then return {3, ''} end
local price = redis.call('HGET', KEYS[4], ARGV[5])
if not price then return {4, ''} end
local quantity = tonumber(ARGV[2])
local amount = tonumber(price) * quantity
-- Beyond one request's limit: the wrapper refuses it with the field named.
if amount > 1000000000 then return {4, ''} end
if tonumber(balance) < amount then return {2, balance} end
local after = redis.call('DECRBY', KEYS[1], amount)
local entry = redis.call('XADD', KEYS[3], '*',
  'operationId', ARGV[1], 'tenantId', ARGV[3], 'application', ARGV[4],
  'operationCode', ARGV[5], 'quantity', ARGV[2], 'amount', tostring(amount),
  'balanceAfter', tostring(after), 'userId', ARGV[7] or '')
local reply = cjson.encode({
  operationId = ARGV[1], tenantId = ARGV[3], application = ARGV[4],
  operationCode = ARGV[5], quantity = quantity, amount = amount, balanceAfter = after,
  entry = entry })
redis.call('SET', KEYS[2], reply, 'EX', tonumber(ARGV[6]))
return {0, reply}
