-- Fast-path consumption against a mirrored allocation, atomically:
-- a repeated operation id returns the first reply; otherwise the operation is priced from the
-- price table the wrapper writes, the grants in effect are drawn in the ledger's order
-- (priority, then earliest expiry, then the oldest grant: the order of KEYS[6]), the balance
-- is decremented and a credit.consumed entry naming the grants drawn is appended to the
-- app's own credit stream of the partition (only it may write there under the Redis ACLs).
-- KEYS[1] balance, KEYS[2] operation record, KEYS[3] credit stream, KEYS[4] price table,
-- KEYS[5] grants (`<id>` remaining, `<id>:w` "<effective ms> <expiry ms>"), KEYS[6] grant
-- order (one hash tag: one slot).
-- ARGV: operationId, quantity, tenantId, application, operationCode, record TTL (seconds),
-- userId (the user the app acted for; empty when it did not say).
-- Returns {status, text}: 0 charged (reply JSON), 1 replayed (reply JSON),
-- 2 insufficient (the credits in effect), 3 not mirrored, 4 not priced here (no price, or over
-- the limit): the caller asks the wrapper, which prices authoritatively.
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
-- Scripts replicate their effects, so reading the clock here is allowed and consistent.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGE', KEYS[6], 0, -1)
local left, usable, draws = amount, 0, {}
for _, id in ipairs(ids) do
  -- Covered: the grants after do not matter (their credits are only counted for a refusal).
  if left == 0 then break end
  local g = redis.call('HMGET', KEYS[5], id, id .. ':w')
  local remaining = tonumber(g[1] or '0')
  local effective, expiry = string.match(g[2] or '', '^(%d+) (%d+)$')
  effective, expiry = tonumber(effective), tonumber(expiry)
  if remaining > 0 and effective and effective <= now and (expiry == 0 or expiry > now) then
    usable = usable + remaining
    local take = math.min(remaining, left)
    draws[#draws + 1] = {id, take}
    left = left - take
  end
end
if left > 0 then return {2, tostring(usable)} end
local drawn = {}
for i, d in ipairs(draws) do
  redis.call('HINCRBY', KEYS[5], d[1], -d[2])
  drawn[i] = d[1] .. ':' .. d[2]
end
local after = redis.call('DECRBY', KEYS[1], amount)
local entry = redis.call('XADD', KEYS[3], '*',
  'operationId', ARGV[1], 'tenantId', ARGV[3], 'application', ARGV[4],
  'operationCode', ARGV[5], 'quantity', ARGV[2], 'amount', tostring(amount),
  'balanceAfter', tostring(after), 'userId', ARGV[7] or '', 'draws', table.concat(drawn, ','))
local reply = cjson.encode({
  operationId = ARGV[1], tenantId = ARGV[3], application = ARGV[4],
  operationCode = ARGV[5], quantity = quantity, amount = amount, balanceAfter = after,
  entry = entry, draws = table.concat(drawn, ',') })
redis.call('SET', KEYS[2], reply, 'EX', tonumber(ARGV[6]))
return {0, reply}
