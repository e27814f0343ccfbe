-- Claim a session for a node: one atomic step that bumps the fencing epoch.
-- KEYS: session hash, sessions set, online hash, inbox stream (one user's slot).
-- ARGV: session id, node id, after ('' = the stored ack cursor), ttl s, replay cap.
-- Returns {epoch, previous node, previous online flag, replay-from id,
--          entries pending after it (capped), 1 if entries after it were trimmed,
--          1 if the session existed before}.
local existed = redis.call('EXISTS', KEYS[1])
local prev = redis.call('HMGET', KEYS[1], 'epoch', 'node', 'online', 'cursor')

-- The epoch never goes back, even if the session hash expired meanwhile:
-- it is at least the server clock in ms, and always above the last one.
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local epoch = math.max((tonumber(prev[1]) or 0) + 1, now_ms)

local after = ARGV[3]
if after == '' then after = prev[4] or '0-0' end

local pending = 0
local trimmed = 0
if redis.call('EXISTS', KEYS[4]) == 1 then
  pending = #redis.call('XRANGE', KEYS[4], '(' .. after, '+', 'COUNT', ARGV[5])
  if after ~= '0-0' then
    local info = redis.call('XINFO', 'STREAM', KEYS[4])
    for i = 1, #info, 2 do
      if info[i] == 'max-deleted-entry-id' then
        local dm, ds = string.match(info[i + 1], '^(%d+)-(%d+)$')
        local am, as = string.match(after, '^(%d+)-(%d+)$')
        dm, ds, am, as = tonumber(dm), tonumber(ds), tonumber(am), tonumber(as)
        if dm > am or (dm == am and ds > as) then trimmed = 1 end
      end
    end
  end
end

redis.call('HSET', KEYS[1], 'epoch', string.format('%d', epoch), 'node', ARGV[2],
  'online', '1', 'seen', string.format('%d', now_ms))
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('EXPIRE', KEYS[3], ARGV[4])
return {string.format('%d', epoch), prev[2] or '', prev[3] or '0', after, pending,
  trimmed, existed}
