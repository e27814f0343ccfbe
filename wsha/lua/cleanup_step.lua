-- Record cleanup progress: drop handled entries and renew the lock's lease,
-- if the caller still holds the lock.
-- KEYS: lock, orphans (one node's slot). ARGV: lock token, lease ms, entries...
-- Returns 1, or 0 if the lease ran out and the lock is no longer the caller's.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if #ARGV > 2 then
  redis.call('SREM', KEYS[2], unpack(ARGV, 3))
end
return 1
