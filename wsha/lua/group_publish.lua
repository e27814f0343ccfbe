-- uses: trim
-- Store one message in a group's history once per (sender, client id), then
-- tell every node reading the group: one atomic step in the group's slot.
-- KEYS: history stream, dedupe marker, trimmed marker, members set.
-- ARGV: sender, body (JSON), max length, history ttl s, dedupe ttl s, ts ms,
--       client id, channel, publishing member ('' = no membership needed).
-- Returns {history id, 1 if already stored / 0 if stored now / -1 if the
--          publisher is not a member}.
if ARGV[9] ~= '' and redis.call('SISMEMBER', KEYS[4], ARGV[9]) == 0 then
  return {'', -1}
end
local stored = redis.call('GET', KEYS[2])
if stored then
  return {stored, 1}
end

-- The previous id travels with the message, so a reader that missed one
-- (a Pub/Sub reconnect) sees the gap and reads the history to fill it.
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local prev = '0-0'
if #last > 0 then prev = last[1][1] end
local id = redis.call('XADD', KEYS[1], '*',
  'f', ARGV[1], 'b', ARGV[2], 't', ARGV[6], 'c', ARGV[7])

trim_exactly(KEYS[1], ARGV[3], KEYS[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], id, 'EX', ARGV[5])

redis.call('PUBLISH', ARGV[8], cjson.encode({k = 'm', id = id, p = prev,
  f = ARGV[1], t = ARGV[6], b = ARGV[2]}))
return {id, 0}
