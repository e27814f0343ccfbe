-- Move a session's broadcast cursor forward, for the owner holding the newest
-- epoch, and keep the user's session keys alive while the session is in use.
-- KEYS: session hash, sessions set, online hash (one user's slot).
-- ARGV: epoch, broadcast id acknowledged, ttl s.
-- Returns 1 if the cursor moved, 0 if stale owner or not newer.
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then
  return 0
end
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
local cur = redis.call('HGET', KEYS[1], 'bcast') or '0-0'
local cm, cs = string.match(cur, '^(%d+)-(%d+)$')
local nm, ns = string.match(ARGV[2], '^(%d+)-(%d+)$')
cm, cs, nm, ns = tonumber(cm), tonumber(cs), tonumber(nm), tonumber(ns)
if nm > cm or (nm == cm and ns > cs) then
  redis.call('HSET', KEYS[1], 'bcast', ARGV[2])
  return 1
end
return 0
