-- Finish cleaning up after a node and release its lock.
-- KEYS: registration, lock, cleanup record (one node's slot).
-- ARGV: lock token, sessions marked offline, record ttl s, '1' for own cleanup.
-- Returns 'gone' (the node stays dead: forget it), 'back' (it is registered
-- again: keep it) or 'lost' (the lease ran out first; the reaper that took the
-- lock over finishes).
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 'lost'
end
redis.call('DEL', KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 'back'
end
if ARGV[4] ~= '1' then
  redis.call('HSET', KEYS[3], 'state', 'done')
  redis.call('HINCRBY', KEYS[3], 'sessions', ARGV[2])
  redis.call('EXPIRE', KEYS[3], ARGV[3])
end
return 'gone'
