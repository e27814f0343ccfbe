-- Store one message in a user's inbox, once per (sender, client id).
-- KEYS: inbox stream, dedupe marker, online-sessions hash, trimmed marker
--       (one user's slot).
-- ARGV: sender, body (JSON), max length, inbox ttl s, dedupe ttl s, ts ms, client id.
-- Returns {inbox id, 1 if it was already stored, nodes holding online sessions}.
local stored = redis.call('GET', KEYS[2])
if stored then
  return {stored, 1, redis.call('HVALS', KEYS[3])}
end
local id = redis.call('XADD', KEYS[1], '*',
  'f', ARGV[1], 'b', ARGV[2], 't', ARGV[6], 'c', ARGV[7])

-- Exact trimming (usually one entry) that remembers the newest id it removed,
-- so a later resume from before it can be told messages were lost.
local over = redis.call('XLEN', KEYS[1]) - tonumber(ARGV[3])
if over > 0 then
  local gone = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', over)
  redis.call('XTRIM', KEYS[1], 'MAXLEN', ARGV[3])
  redis.call('SET', KEYS[4], gone[#gone][1], 'EX', ARGV[4])
end

redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], id, 'EX', ARGV[5])
return {id, 0, redis.call('HVALS', KEYS[3])}
