-- Register or renew a node's registration, and say whether it was cleaned up
-- as dead meanwhile.
-- KEYS: registration, cleanup record (one node's slot).
-- ARGV: registration JSON, ttl ms, '1' for the first registration of a process.
-- Returns 'ok' (renewed), 'new' (first registration), 'restored' (it had
-- expired but nobody cleaned up after it) or 'reaped' (it had expired and a
-- survivor began cleaning up: the node's sessions were or are being marked
-- offline, so the node must close its connections).
if ARGV[3] == '1' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('DEL', KEYS[2])
  return 'new'
end
if redis.call('SET', KEYS[1], ARGV[1], 'XX', 'PX', ARGV[2]) then
  return 'ok'
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('DEL', KEYS[2]) == 1 then
  return 'reaped'
end
return 'restored'
