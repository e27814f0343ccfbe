-- Mark a session offline, but only for the owner holding the newest epoch:
-- a late close from an older owner changes nothing.
-- KEYS: session hash, online hash. ARGV: session id, epoch.
-- Returns 1 if released, 0 if the caller no longer owns the session.
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[2] then
  return 0
end
local now = redis.call('TIME')
redis.call('HSET', KEYS[1], 'online', '0', 'node', '',
  'seen', string.format('%d', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)))
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
