"""InboxStore with replicas required: nothing counts until a replica holds it."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from wsha.inbox import Durability, InboxLimits, InboxStore
from wsha.services.redis_service import RedisUnavailable


class ScriptedRedis:
    """Answers EVAL and XRANGE with fixed replies and WAIT with ``confirmed``."""

    def __init__(self, confirmed: int) -> None:
        self.confirmed = confirmed
        self.commands: list[tuple[Any, ...]] = []

    def eval(self, script: str, keys: Any = (), args: Any = ()) -> Deferred[Any]:
        """An append that stored entry 5-0."""
        self.commands.append(("EVAL",))
        return succeed(["5-0", 0, []])

    def execute_command(self, *args: Any) -> Deferred[Any]:
        """XRANGE returns one entry; WAIT returns ``confirmed``."""
        self.commands.append(args)
        if args[0] == "WAIT":
            return succeed(self.confirmed)
        return succeed([["6-0", ["f", "a", "b", "1", "t", "0", "c", "x"]]])


class DurabilityTests(SynchronousTestCase):
    """Appends and reads wait for replicas when asked to, and only then."""

    def store(self, confirmed: int, replicas: int) -> tuple[InboxStore, ScriptedRedis]:
        """A store over a scripted Redis whose WAIT confirms ``confirmed``."""
        redis = ScriptedRedis(confirmed)
        return InboxStore(redis, InboxLimits(), Durability(replicas, 250)), redis

    def test_append_confirmed_by_a_replica_is_acknowledged(self) -> None:
        """With one replica required and one confirming, the append succeeds
        after a WAIT for it."""
        store, redis = self.store(confirmed=1, replicas=1)
        result = self.successResultOf(store.append("bob", "al", "c1", "1", 0))
        self.assertEqual(result.id, "5-0")
        self.assertIn(("WAIT", 1, 250), redis.commands)

    def test_append_no_replica_confirmed_is_retryable(self) -> None:
        """If no replica confirms in time, the append fails as unavailable, so
        the client sends again (and a retry is deduplicated)."""
        store, _ = self.store(confirmed=0, replicas=1)
        self.failureResultOf(store.append("bob", "al", "c1", "1", 0), RedisUnavailable)

    def test_read_is_not_delivered_before_replicas_hold_it(self) -> None:
        """A read whose entries no replica confirmed fails, so nothing a
        failover could take back reaches a client."""
        store, _ = self.store(confirmed=0, replicas=1)
        self.failureResultOf(store.read_after("bob", "0-0", 10), RedisUnavailable)

    def test_no_replicas_required_means_no_wait(self) -> None:
        """The default trusts the master: no WAIT is sent."""
        store, redis = self.store(confirmed=0, replicas=0)
        self.successResultOf(store.append("bob", "al", "c1", "1", 0))
        self.successResultOf(store.read_after("bob", "0-0", 10))
        self.assertNotIn("WAIT", [c[0] for c in redis.commands])
