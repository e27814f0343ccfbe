"""System broadcasts: one message to every session in an audience.

A broadcast is stored first, in a bounded history in Redis, then announced on
one Kafka topic that every node reads in full. Each node's
:class:`~wsha.broadcast.feed.BroadcastFeed` puts the history in order (filling
any gap from Redis) and hands each entry to its local sessions; each session's
:class:`~wsha.broadcast.session.SessionBroadcasts` resumes after its own cursor.
Documented in docs/protocol.md ("System broadcast"), docs/kafka.md and
docs/redis.md.
"""
