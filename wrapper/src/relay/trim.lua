-- Trim a stream below the oldest entry that some consumer group has not acknowledged.
-- KEYS[1]: the stream. Returns {entries removed, the MINID used (or false when nothing to do)}.
--
-- For each group the floor is its smallest pending id (delivered, not acknowledged) or, when
-- nothing is pending, its last-delivered-id (everything before it was acknowledged; entries
-- after it were never delivered). The stream is trimmed below the smallest floor, so no entry a
-- group has not acknowledged is ever removed. A stream without groups (or with only passive
-- ones, below) is left alone.
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, false} end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return {0, false} end
-- ARGV: groups that count for the floor but do not make a stream trimmable on their own (the
-- wrapper's webhooks group is on every stream from the start; the apps' groups may come later
-- and must find what was published before them).
local passive = {}
for i = 1, #ARGV do passive[ARGV[i]] = true end
local active = 0
for _, g in ipairs(groups) do
  for i = 1, #g, 2 do
    if g[i] == 'name' and not passive[g[i + 1]] then active = active + 1 end
  end
end
if active == 0 then return {0, false} end

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end

local floor = nil
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local candidate = info['last-delivered-id']
  if tonumber(info['pending']) > 0 then
    local summary = redis.call('XPENDING', KEYS[1], info['name'])
    candidate = summary[2]
  end
  if floor == nil or less(candidate, floor) then floor = candidate end
end
local removed = redis.call('XTRIM', KEYS[1], 'MINID', floor)
return {removed, floor}
