-- Where a session's broadcasts resume: its stored broadcast cursor, or, when
-- it has none yet, the given default, which is stored as its cursor (so a
-- session that never acknowledges a broadcast still resumes where it began).
-- Only the owner holding the newest epoch writes.
-- KEYS: session hash (one user's slot).
-- ARGV: epoch, default id.
-- Returns the cursor, or '' if the caller no longer owns the session.
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then
  return ''
end
local cursor = redis.call('HGET', KEYS[1], 'bcast')
if cursor then
  return cursor
end
redis.call('HSET', KEYS[1], 'bcast', ARGV[2])
return ARGV[2]
