-- Move a session's position in one group forward, for the newest owner only,
-- and only while the session is still subscribed.
-- Like an inbox ack, it keeps the session's keys alive while the session is in use.
-- KEYS: session hash, subscriptions hash, sessions set, online hash,
--       presence-subscriptions set (user slot).
-- ARGV: epoch, group, group history id acknowledged, ttl s.
-- Returns 1 if the position moved.
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[4]) end
local cur = redis.call('HGET', KEYS[2], ARGV[2])
if not cur then return 0 end
local cm, cs = string.match(cur, '^(%d+)-(%d+)$')
local nm, ns = string.match(ARGV[3], '^(%d+)-(%d+)$')
cm, cs, nm, ns = tonumber(cm), tonumber(cs), tonumber(nm), tonumber(ns)
if nm > cm or (nm == cm and ns > cs) then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  return 1
end
return 0
