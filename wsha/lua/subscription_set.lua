-- Record one session's subscription to a group (user slot).
-- KEYS: subscriptions hash, presence-subscriptions set.
-- ARGV: group, position for a new subscription, position asked for ('' = keep
--       the stored one), '1' to receive presence events, ttl s.
-- Returns the position the subscription resumes after.
local stored = redis.call('HGET', KEYS[1], ARGV[1])
local position = ARGV[3]
if position == '' then position = stored or ARGV[2] end
redis.call('HSET', KEYS[1], ARGV[1], position)
if ARGV[4] == '1' then
  redis.call('SADD', KEYS[2], ARGV[1])
else
  redis.call('SREM', KEYS[2], ARGV[1])
end
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return position
