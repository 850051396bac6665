-- Publish a batch of entries to a partition stream, fenced by the leadership epoch.
-- KEYS[1] the partition stream, KEYS[2] its epoch (same hash tag, so one slot).
-- ARGV[1] the publisher's epoch; then per entry: its field count n, then n field/value strings.
-- A publisher older than the newest epoch seen is refused (nothing written); an entry-less call
-- only raises the epoch (the fence a new leader sets before it looks at the stream).
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
local mine = tonumber(ARGV[1])
if current > mine then
  return redis.error_reply('FENCED: epoch ' .. ARGV[1] .. ' is older than ' .. current)
end
if current < mine then redis.call('SET', KEYS[2], ARGV[1]) end
local ids = {}
local i = 2
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return ids
