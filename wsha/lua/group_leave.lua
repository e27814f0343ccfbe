-- Take a member's presence entry away, fenced by epoch, and say so.
-- KEYS: presence hash, members set (group slot).
-- ARGV: member, epoch ('' = whatever holds it), channel, leave event (JSON),
--       '1' to end the membership too (unsubscribe).
-- Returns 1 if a presence entry was removed (and the leave event published).
if ARGV[5] == '1' then
  redis.call('SREM', KEYS[2], ARGV[1])
end
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return 0 end
if ARGV[2] ~= '' and string.match(current, '^(%d+) ') ~= ARGV[2] then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
