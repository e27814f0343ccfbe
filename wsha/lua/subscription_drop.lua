-- Forget one session's subscription to a group (user slot).
-- KEYS: subscriptions hash, presence-subscriptions set. ARGV: group.
-- Returns 1 if the session was subscribed.
redis.call('SREM', KEYS[2], ARGV[1])
return redis.call('HDEL', KEYS[1], ARGV[1])
