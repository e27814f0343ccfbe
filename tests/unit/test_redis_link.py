"""Unit tests for :mod:`wsha.services.redis_link`, without a network.

The watched factories are txredisapi's own, fed fake connections; the Sentinel
target's address check runs against a fake Sentinel manager.
"""

from __future__ import annotations

from typing import Any

import txredisapi
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from wsha.services.redis_link import (
    DirectTarget,
    LinkSettings,
    SentinelTarget,
    _WatchedFactory,
)
from wsha.services.redis_url import RedisAddress, SentinelAddress


class Watcher:
    """A LinkWatcher that records what it is told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def link_up(self, connection: Any) -> None:
        """Record a connection made usable."""
        self.events.append(("up", connection))

    def link_down(self, connection: Any) -> None:
        """Record a connection lost."""
        self.events.append(("down", connection))


class FakeTransport:
    """Just enough of a TCP transport: a peer and a way to drop it."""

    def __init__(self, host: str, port: int) -> None:
        self.peer = IPv4Address("TCP", host, port)
        self.lost = False

    def getPeer(self) -> IPv4Address:
        """The server's address."""
        return self.peer

    def loseConnection(self) -> None:
        """Record the drop."""
        self.lost = True


class FakeProtocol:
    """A txredisapi protocol as a factory's pool sees it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 6379) -> None:
        self.connected = 1
        self.transport = FakeTransport(host, port)
        self.disconnected: Deferred[Any] = Deferred()

    def whenDisconnected(self) -> Deferred[Any]:
        """Fires when the test says the connection is gone."""
        return self.disconnected


class WatchedFactoryTests(SynchronousTestCase):
    """The factory tells its watcher about its pool, and nothing more."""

    def test_pool_changes_reach_the_watcher(self) -> None:
        """A connection added to the pool is reported up; when it is lost,
        down; the reconnect settings reach txredisapi's backoff."""
        watcher = Watcher()
        factory = _WatchedFactory(
            watcher,
            LinkSettings(timeout=1.0, reconnect_max=0.5),
            uuid="test",
            dbid=0,
            poolsize=1,
            isLazy=True,
        )
        self.assertEqual((factory.initialDelay, factory.maxDelay), (0.1, 0.5))

        conn = FakeProtocol()
        factory.addConnection(conn)
        self.assertEqual(watcher.events, [("up", conn)])

        conn.connected = 0
        conn.disconnected.callback(conn)
        self.assertEqual(watcher.events, [("up", conn), ("down", conn)])

    def test_connection_dead_before_pooling_is_not_reported(self) -> None:
        """A connection that died before it reached the pool is never reported."""
        watcher = Watcher()
        factory = _WatchedFactory(
            watcher, LinkSettings(), uuid="t", dbid=0, poolsize=1, isLazy=True
        )
        conn = FakeProtocol()
        conn.connected = 0
        factory.addConnection(conn)
        self.assertEqual(watcher.events, [])


class FakeSentinel:
    """A txredisapi Sentinel whose answer about the master the test sets."""

    def __init__(self, answer: Deferred[Any]) -> None:
        self.answer = answer
        self.asked: list[str] = []

    def discover_master(self, name: str) -> Deferred[Any]:
        """Record the question; fire with the prepared answer."""
        self.asked.append(name)
        return self.answer


def sentinel_target(answer: Deferred[Any]) -> tuple[SentinelTarget, FakeSentinel]:
    """A SentinelTarget for master ``wsha`` that asks ``FakeSentinel``."""
    sentinel = FakeSentinel(answer)
    address = SentinelAddress((("127.0.0.1", 26379),), "wsha", 0, None, None)
    return SentinelTarget(address, LinkSettings(), sentinel=sentinel), sentinel


class VerifyTests(SynchronousTestCase):
    """Whether a live connection still goes to the master."""

    def test_connection_to_the_named_master_is_kept(self) -> None:
        """The Sentinels name the server the connection goes to: True, kept."""
        target, sentinel = sentinel_target(succeed(("127.0.0.1", 6380)))
        conn = FakeProtocol(port=6380)
        self.assertTrue(self.successResultOf(target.verify(conn)))
        self.assertFalse(conn.transport.lost)
        self.assertEqual(sentinel.asked, ["wsha"])

    def test_connection_to_a_former_master_is_dropped(self) -> None:
        """After a failover the connection to the old master is dropped, so the
        link reconnects to the new one."""
        target, _ = sentinel_target(succeed(("127.0.0.1", 6381)))
        conn = FakeProtocol(port=6380)
        self.assertFalse(self.successResultOf(target.verify(conn)))
        self.assertTrue(conn.transport.lost)

    def test_no_answer_keeps_the_connection(self) -> None:
        """When no Sentinel can name a master, the connection is kept."""
        target, _ = sentinel_target(fail(txredisapi.MasterNotFoundError("none")))
        conn = FakeProtocol(port=6380)
        self.assertTrue(self.successResultOf(target.verify(conn)))
        self.assertFalse(conn.transport.lost)

    def test_direct_target_never_moves(self) -> None:
        """A plain server's connection is always where it should be."""
        target = DirectTarget(RedisAddress("127.0.0.1", 6379, 0, None, None), Clock())
        self.assertTrue(self.successResultOf(target.verify(FakeProtocol())))
