-- uses: trim
-- Store one system broadcast in the history, once per (sender, client id).
-- KEYS: history stream, dedupe marker, trimmed marker (one broadcast channel's slot).
-- ARGV: sender, body (JSON), audience (JSON), ts ms, max length, dedupe ttl s,
--       client id.
-- Returns {history id, the id of the entry before it ('0-0' if none),
--          1 if it was already stored, and for a stored one still in the
--          history its fields (flat), so that it can be announced again}.
local stored = redis.call('GET', KEYS[2])
if stored then
  local entry = redis.call('XRANGE', KEYS[1], stored, stored)
  if #entry == 0 then
    return {stored, '', 1}
  end
  local before = redis.call('XREVRANGE', KEYS[1], '(' .. stored, '-', 'COUNT', 1)
  local prev = '0-0'
  if #before > 0 then prev = before[1][1] end
  return {stored, prev, 1, entry[1][2]}
end

-- The entry before the new one, read in the same step: a node that has seen
-- exactly it knows it missed nothing in between.
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local prev = '0-0'
if #last > 0 then prev = last[1][1] end
local id = redis.call('XADD', KEYS[1], '*', 'f', ARGV[1], 'b', ARGV[2],
  'a', ARGV[3], 't', ARGV[4], 'c', ARGV[7])

-- Exact trimming that remembers the newest id it removed, so that a session
-- resuming from before it is told it missed broadcasts.
trim_exactly(KEYS[1], ARGV[5], KEYS[3])

redis.call('SET', KEYS[2], id, 'EX', ARGV[6])
return {id, prev, 0}
