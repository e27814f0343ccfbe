-- Claim a session for a node: one atomic step that bumps the fencing epoch.
-- KEYS: session hash, sessions set, online hash, inbox stream, trimmed marker,
--       subscriptions hash, presence-subscriptions set (one user's slot).
-- ARGV: session id, node id, after ('' = the stored ack cursor), ttl s, replay cap,
--       most sessions the user may have online at once (0 = no limit).
-- Returns {epoch, previous node, previous online flag, replay-from id,
--          entries pending after it (capped), 1 if entries after it were trimmed,
--          1 if the session existed before, the subscriptions as a flat
--          group/position list, the groups with presence events},
--          or {'limit', online count} when the user is at the session limit.
local limit = tonumber(ARGV[6]) or 0
if limit > 0 and redis.call('HEXISTS', KEYS[3], ARGV[1]) == 0 then
  local online = redis.call('HLEN', KEYS[3])
  if online >= limit then return {'limit', online} end
end
local existed = redis.call('EXISTS', KEYS[1])
local prev = redis.call('HMGET', KEYS[1], 'epoch', 'node', 'online', 'cursor')

-- The epoch never goes back, even if the session hash expired meanwhile:
-- it is at least the server clock in ms, and always above the last one.
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local epoch = math.max((tonumber(prev[1]) or 0) + 1, now_ms)

local after = ARGV[3]
if after == '' then after = prev[4] or '0-0' end

local function newer(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end

-- Count what will be replayed in small batches: entries can be large.
local pending = 0
local cap = tonumber(ARGV[5])
local from = '(' .. after
while pending < cap do
  local batch = redis.call('XRANGE', KEYS[4], from, '+', 'COUNT',
    math.min(100, cap - pending))
  if #batch == 0 then break end
  pending = pending + #batch
  from = '(' .. batch[#batch][1]
end

-- Messages after the resume point are gone if the length limit trimmed one
-- newer than it, or if the whole inbox expired.
local trimmed = 0
if after ~= '0-0' then
  local cut = redis.call('GET', KEYS[5])
  if (cut and newer(cut, after)) or redis.call('EXISTS', KEYS[4]) == 0 then
    trimmed = 1
  end
end

redis.call('HSET', KEYS[1], 'epoch', string.format('%d', epoch), 'node', ARGV[2],
  'online', '1', 'seen', string.format('%d', now_ms))
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('EXPIRE', KEYS[3], ARGV[4])
redis.call('EXPIRE', KEYS[6], ARGV[4])
redis.call('EXPIRE', KEYS[7], ARGV[4])
return {string.format('%d', epoch), prev[2] or '', prev[3] or '0', after, pending,
  trimmed, existed, redis.call('HGETALL', KEYS[6]), redis.call('SMEMBERS', KEYS[7])}
