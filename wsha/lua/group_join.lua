-- Make a session a member of a group and, if it is online, present in it.
-- KEYS: members set, presence hash, history stream, trimmed marker (group slot).
-- ARGV: member, epoch ('' = not online: membership only), node, channel,
--       join event (JSON).
-- A presence entry is fenced by epoch: an older connection never overwrites a
-- newer one's. A join event goes out only when the member was not present.
-- Returns {newest history id or '0-0', newest trimmed id or '', 1 if joined now,
--          1 if the session was not a member before}.
local added = redis.call('SADD', KEYS[1], ARGV[1])
local joined = 0
if ARGV[2] ~= '' then
  local current = redis.call('HGET', KEYS[2], ARGV[1])
  local held = current and tonumber(string.match(current, '^(%d+) ')) or 0
  if tonumber(ARGV[2]) >= held then
    redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ' ' .. ARGV[3])
    if not current then
      joined = 1
      redis.call('PUBLISH', ARGV[4], ARGV[5])
    end
  end
end
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
local head = '0-0'
if #last > 0 then head = last[1][1] end
return {head, redis.call('GET', KEYS[4]) or '', joined, added}
