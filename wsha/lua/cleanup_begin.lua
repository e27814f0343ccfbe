-- Begin cleaning up after a node: take its lock and set its session index
-- aside, in one step with the check that its registration is gone, so a node
-- that renews its registration and a reaper never both win.
-- KEYS: registration, lock, cleanup record, session index, orphans (one node's slot).
-- ARGV: lock token, lease ms, record ttl s, reaper node id,
--       '1' when a node cleans up its own earlier sessions (no liveness check,
--       no record).
-- Returns 'alive' (registered: nothing to do), 'done' (already cleaned up),
-- 'busy' (another reaper holds the lock) or 'locked' (the caller holds it).
local own = ARGV[5] == '1'
if not own then
  if redis.call('EXISTS', KEYS[1]) == 1 then return 'alive' end
  if redis.call('HGET', KEYS[3], 'state') == 'done' then return 'done' end
end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 'busy'
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('SUNIONSTORE', KEYS[5], KEYS[5], KEYS[4])
  redis.call('DEL', KEYS[4])
end
if not own then
  redis.call('HSET', KEYS[3], 'state', 'cleaning', 'by', ARGV[4])
  redis.call('HINCRBY', KEYS[3], 'runs', 1)
  redis.call('EXPIRE', KEYS[3], ARGV[3])
end
return 'locked'
