-- Mark a dead node's session offline, but only if that node still owns it at
-- that epoch: a session that reconnected since (a newer epoch, on any node,
-- or a release) is left alone.
-- KEYS: session hash, online hash (one user's slot).
-- ARGV: session id, dead node id, epoch.
-- Returns 1 if the session was marked offline, 0 if it had moved on.
local owner = redis.call('HMGET', KEYS[1], 'node', 'epoch')
if owner[1] ~= ARGV[2] or owner[2] ~= ARGV[3] then
  return 0
end
local now = redis.call('TIME')
redis.call('HSET', KEYS[1], 'online', '0', 'node', '',
  'seen', string.format('%d', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)))
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return 1
