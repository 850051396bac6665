-- Trim a stream below the oldest entry that some consumer group has not acknowledged.
-- KEYS[1]: the stream. Returns {entries removed, the MINID used (or false when nothing to do)}.
--
-- For each group the floor is its smallest pending id (delivered, not acknowledged) or, when
-- nothing is pending, its last-delivered-id (everything before it was acknowledged; entries
-- after it were never delivered). The stream is trimmed below the smallest floor, so no entry a
-- group has not acknowledged is ever removed. A stream without groups is left alone.
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, false} end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return {0, false} end

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
