-- uses: trim
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

trim_exactly(KEYS[1], ARGV[3], KEYS[4], ARGV[4])

redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], id, 'EX', ARGV[5])
return {id, 0, redis.call('HVALS', KEYS[3])}
