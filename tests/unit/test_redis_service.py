"""Unit tests for :class:`wsha.services.redis_service.RedisService` on fakes.

A fake target stands in for txredisapi: the test decides when the link comes
up or goes down and when (and whether) each command is answered.
"""

from __future__ import annotations

from typing import Any

import txredisapi
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from wsha.services.redis_link import LinkSettings, LinkWatcher
from wsha.services.redis_service import RedisService, RedisUnavailable


class FakeConnection:
    """A txredisapi handler whose replies the test gives by hand."""

    def __init__(self) -> None:
        self.commands: list[tuple[tuple[Any, ...], Deferred[Any]]] = []
        self.pings: list[Deferred[Any]] = []
        self.disconnected = False

    def execute_command(self, *args: Any) -> Deferred[Any]:
        """Record a command; the test fires the returned Deferred."""
        d: Deferred[Any] = Deferred()
        self.commands.append((args, d))
        return d

    def eval(self, script: str, keys: list[str], args: list[Any]) -> Deferred[Any]:
        """Record a script run as an EVAL command."""
        return self.execute_command("EVAL", script, *keys, *args)

    def ping(self) -> Deferred[Any]:
        """Record a PING; the test fires the returned Deferred."""
        d: Deferred[Any] = Deferred()
        self.pings.append(d)
        return d

    def disconnect(self) -> Deferred[None]:
        """Close at once."""
        self.disconnected = True
        return succeed(None)


class FakeTarget:
    """A RedisTarget that hands out one FakeConnection and keeps its watcher."""

    def __init__(self) -> None:
        self.connection = FakeConnection()
        self.watcher: LinkWatcher | None = None
        self.settings: LinkSettings | None = None
        self.closed = False
        self.verifies: list[tuple[Any, Deferred[bool]]] = []

    def describe(self) -> str:
        """A fixed name for logs."""
        return "fake:6379/0"

    def open(self, watcher: LinkWatcher, settings: LinkSettings) -> Any:
        """Keep the watcher; the test calls link_up/link_down on it."""
        self.watcher, self.settings = watcher, settings
        return self.connection

    def verify(self, connection: Any) -> Deferred[bool]:
        """Record a check of ``connection``; the test fires the returned Deferred."""
        d: Deferred[bool] = Deferred()
        self.verifies.append((connection, d))
        return d

    def close(self) -> Deferred[None]:
        """Nothing to release."""
        self.closed = True
        return succeed(None)


class RedisServiceTests(SynchronousTestCase):
    """Timeouts, fail-fast while down, and the health state."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.target = FakeTarget()
        self.redis = RedisService(
            self.target, self.clock, timeout=2.0, health_interval=1.0
        )
        self.changes: list[bool] = []
        self.redis.on_change(self.changes.append)

    def start(self) -> FakeConnection:
        """Start the service and bring its link up (with ``self.protocol``)."""
        started = self.redis.startService()
        self.assertNoResult(started)
        assert self.target.watcher is not None
        self.protocol = object()
        self.target.watcher.link_up(self.protocol)
        self.successResultOf(started)
        return self.target.connection

    def tearDown(self) -> None:
        if self.redis.running:
            self.successResultOf(self.redis.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_start_waits_for_the_first_connection(self) -> None:
        """startService fires once the link is up, and then Redis is available."""
        self.assertFalse(self.redis.available)
        self.start()
        self.assertTrue(self.redis.available)
        self.assertEqual(self.changes, [True])
        assert self.target.settings is not None
        self.assertEqual(self.target.settings.timeout, 2.0)

    def test_command_answers(self) -> None:
        """A command's reply is passed through."""
        connection = self.start()
        d = self.redis.execute_command("GET", "k")
        connection.commands[0][1].callback("v")
        self.assertEqual(self.successResultOf(d), "v")

    def test_command_without_reply_times_out(self) -> None:
        """A command unanswered for ``timeout`` seconds fails with RedisUnavailable."""
        self.start()
        d = self.redis.eval("return 1", ["k"], [1])
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.failureResultOf(d, RedisUnavailable)

    def test_commands_fail_at_once_while_down(self) -> None:
        """With the link down nothing is sent: commands fail immediately."""
        connection = self.start()
        assert self.target.watcher is not None
        self.target.watcher.link_down(object())

        self.failureResultOf(self.redis.execute_command("GET", "k"), RedisUnavailable)
        self.assertEqual(connection.commands, [])
        self.assertFalse(self.redis.available)
        self.assertEqual(self.changes, [True, False])
        self.assertFalse(self.successResultOf(self.redis.is_healthy()))

    def test_link_coming_back_makes_it_available(self) -> None:
        """A reconnect flips ``available`` back and tells the listeners."""
        self.start()
        assert self.target.watcher is not None
        self.target.watcher.link_down(object())
        self.clock.advance(30)
        self.target.watcher.link_up(object())
        self.assertTrue(self.redis.available)
        self.assertEqual(self.changes, [True, False, True])

    def test_connection_errors_become_unavailable(self) -> None:
        """A lost connection, a reply timeout, or a demoted master's READONLY
        mean "retry later"; other error replies pass through unchanged."""
        connection = self.start()
        errors = [
            txredisapi.ConnectionError("Lost connection"),
            txredisapi.TimeoutError("Not received Redis response"),
            txredisapi.ResponseError("READONLY You can't write against a replica"),
        ]
        for error in errors:
            d = self.redis.execute_command("SET", "k", "v")
            connection.commands[-1][1].errback(error)
            self.failureResultOf(d, RedisUnavailable)

        d = self.redis.execute_command("SET", "k")
        connection.commands[-1][1].errback(txredisapi.ResponseError("wrong args"))
        self.failureResultOf(d, txredisapi.ResponseError)

    def test_health_ping_runs_on_the_interval(self) -> None:
        """A PING goes out every ``health_interval`` while the link is up."""
        connection = self.start()
        self.clock.advance(1.0)
        self.assertEqual(len(connection.pings), 1)
        connection.pings[0].callback("PONG")
        self.clock.advance(1.0)
        self.assertEqual(len(connection.pings), 2)
        connection.pings[1].callback("PONG")
        self.assertTrue(self.redis.available)

    def test_pings_never_pile_up(self) -> None:
        """While one PING is unanswered no other is sent."""
        connection = self.start()
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.clock.advance(0.5)
        self.assertEqual(len(connection.pings), 1)

    def test_unanswered_ping_makes_it_unavailable_until_one_answers(self) -> None:
        """A PING unanswered within the timeout marks Redis unavailable (with the
        link still up); the next answered PING marks it available again."""
        connection = self.start()
        self.clock.advance(1.0)
        self.clock.advance(2.0)
        self.assertFalse(self.redis.available)
        self.failureResultOf(self.redis.execute_command("GET", "k"), RedisUnavailable)

        self.clock.advance(1.0)
        self.assertEqual(len(connection.pings), 2)
        connection.pings[1].callback("PONG")
        self.assertTrue(self.redis.available)
        self.assertEqual(self.changes, [True, False, True])

    def test_address_is_checked_one_at_a_time(self) -> None:
        """Each health round asks the target whether the live connection still
        goes to the right server, never with two checks in flight."""
        connection = self.start()
        self.clock.advance(1.0)
        connection.pings[0].callback("PONG")
        self.clock.advance(1.0)
        connection.pings[1].callback("PONG")
        self.assertEqual([c for c, _ in self.target.verifies], [self.protocol])

        self.target.verifies[0][1].callback(True)
        self.clock.advance(1.0)
        self.assertEqual(len(self.target.verifies), 2)
        self.target.verifies[1][1].callback(False)
        self.assertTrue(self.redis.available)

    def test_stuck_address_check_times_out(self) -> None:
        """A check the target never answers is given up after the timeout, and
        the next round checks again."""
        self.start()
        self.clock.advance(1.0)
        self.clock.advance(1.9)
        self.assertFalse(self.target.verifies[0][1].called)
        self.clock.advance(0.1)
        self.assertTrue(self.target.verifies[0][1].called)
        self.clock.advance(1.0)
        self.assertEqual(len(self.target.verifies), 2)

    def test_no_ping_while_the_link_is_down(self) -> None:
        """The health check does not queue PINGs on a link that is down."""
        connection = self.start()
        assert self.target.watcher is not None
        self.target.watcher.link_down(object())
        self.clock.advance(5.0)
        self.assertEqual(connection.pings, [])

    def test_stop_closes_quietly(self) -> None:
        """stopService disconnects, releases the target, cancels the PING in
        flight and does not report the closing as an outage."""
        connection = self.start()
        self.clock.advance(1.0)
        self.successResultOf(self.redis.stopService())
        self.assertTrue(connection.disconnected)
        self.assertTrue(self.target.closed)
        self.assertEqual(self.changes, [True])

    def test_failing_listener_does_not_stop_the_others(self) -> None:
        """A listener that raises is logged; the next one still hears the news."""

        def broken(available: bool) -> None:
            raise RuntimeError("listener bug")

        heard: list[bool] = []
        self.redis._listeners.insert(0, broken)
        self.redis.on_change(heard.append)
        self.start()
        self.assertEqual(heard, [True])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
