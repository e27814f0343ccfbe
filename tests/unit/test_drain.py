"""Unit tests for :mod:`wsha.drain`: the sequence of a node's graceful drain,
on a Clock with a gateway of fakes."""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.fakes import FakeLink, GatewayHarness, appended, make_claim
from wsha import wire
from wsha.client_session import ClientSession
from wsha.drain import DrainTiming, NodeDrain

TIMING = DrainTiming(
    grace=2.0, window=10.0, move_timeout=5.0, timeout=30.0, poll_interval=0.1
)


class FakeProducer:
    """A Kafka bus whose flush answers when the test says (or at once)."""

    def __init__(self, answer: int | None = 0) -> None:
        self.flushes: list[tuple[float, Deferred[int]]] = []
        self._answer = answer

    def flush(self, timeout: float) -> Deferred[int]:
        """Record the flush; fire with the set answer, or never if it is None."""
        d: Deferred[int] = Deferred()
        self.flushes.append((timeout, d))
        if self._answer is not None:
            d.callback(self._answer)
        return d


class DrainHarness(SynchronousTestCase):
    """A NodeDrain over a gateway of fakes, with hooks that record their calls."""

    timing = TIMING

    def setUp(self) -> None:
        self.harness = GatewayHarness()
        self.clock = self.harness.clock
        self.producer = FakeProducer()
        self.events: list[tuple[str, float]] = []
        # The connections open on the node, claimed or not.
        self.clients: list[ClientSession] = []
        self.drain = NodeDrain(
            self.clock,
            "gw-1",
            self.harness.gateway,
            self.producer,
            self.timing,
            lambda: self.events.append(("draining", self.clock.seconds())),
            lambda: self.events.append(("refusing", self.clock.seconds())),
            lambda: self.events.append(("stop", self.clock.seconds())),
            rng=random.Random(7),
            open_connections=lambda: sum(not c.closed for c in self.clients),
        )
        self.t0 = self.clock.seconds()

    def sessions(self, count: int) -> list[tuple[ClientSession, FakeLink]]:
        """``count`` welcomed sessions of distinct users."""
        opened = [self.harness.online(epoch=i + 1, user=f"u{i}") for i in range(count)]
        self.clients.extend(client for client, _ in opened)
        return opened

    def reconnects(self, link: FakeLink) -> list[dict[str, Any]]:
        """The ``reconnect`` frames ``link`` was sent."""
        return link.of_type("reconnect")

    def until_told(self, link: FakeLink, bound: float) -> float:
        """Advance until ``link`` is sent a ``reconnect`` frame; return when."""
        while not self.reconnects(link):
            self.assertLess(self.clock.seconds() - self.t0, bound)
            self.clock.advance(0.05)
        return self.clock.seconds() - self.t0

    def step(self, seconds: float, every: float = 0.05) -> None:
        """Advance the clock by ``seconds`` in small steps."""
        for _ in range(round(seconds / every)):
            self.clock.advance(every)

    def leave(self, client: ClientSession) -> None:
        """The connection of ``client`` closes (its new claim took it over)."""
        client.connection_lost()

    def tearDown(self) -> None:
        # Let any drain under way run to its bound: no call is left behind.
        self.step(self.timing.timeout + 2, every=0.5)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SequenceTests(DrainHarness):
    """Readiness first, then the grace, then the clients, then Kafka."""

    def test_readiness_fails_at_once_and_refusing_waits_for_the_grace(self) -> None:
        """The drain says ``draining`` the moment it starts; new connections are
        refused and clients told only after the grace."""
        ((_, link),) = self.sessions(1)

        self.drain.start()

        self.assertTrue(self.drain.draining)
        self.assertEqual(self.events, [("draining", self.t0)])
        self.clock.advance(1.99)
        self.assertEqual([e for e, _ in self.events], ["draining"])
        self.assertEqual(self.reconnects(link), [])
        self.clock.advance(0.01)
        self.assertEqual([e for e, _ in self.events], ["draining", "refusing"])
        self.assertGreaterEqual(self.until_told(link, 12.1), 2.0)

    def test_each_session_is_told_once_at_a_random_moment_in_the_window(self) -> None:
        """Every session gets one ``reconnect`` frame between the end of the
        grace and the end of the window, spread out rather than all at once."""
        opened = self.sessions(40)
        told_at: dict[int, float] = {}

        self.drain.start()
        for _ in range(int((TIMING.grace + TIMING.window) / 0.05) + 2):
            self.clock.advance(0.05)
            for i, (_, link) in enumerate(opened):
                if self.reconnects(link) and i not in told_at:
                    told_at[i] = self.clock.seconds() - self.t0

        self.assertEqual(len(told_at), 40)
        for _, link in opened:
            self.assertEqual(
                self.reconnects(link),
                [{"type": "reconnect", "reason": "draining", "within_ms": 5000}],
            )
        moments = sorted(told_at.values())
        self.assertGreaterEqual(moments[0], TIMING.grace)
        self.assertLessEqual(moments[-1], TIMING.grace + TIMING.window + 0.05)
        # Spread: no second of the window holds more than a third of them.
        per_second = [int(m) for m in moments]
        self.assertLess(max(per_second.count(s) for s in set(per_second)), 14)

    def test_sessions_that_move_are_not_closed_and_the_drain_ends_early(
        self,
    ) -> None:
        """Sessions that leave after their frame are never closed by the node;
        once none is left, Kafka is flushed and the drain is done."""
        opened = self.sessions(3)
        done = self.drain.start()

        for client, link in opened:
            self.until_told(link, TIMING.grace + TIMING.window + 0.1)
            self.leave(client)
        self.step(0.2)

        report = self.successResultOf(done)
        self.assertEqual((report.told, report.closed, report.left), (3, 0, 0))
        self.assertEqual(sum(len(link.closes) for _, link in opened), 0)
        self.assertEqual(len(self.producer.flushes), 1)
        self.assertLess(report.seconds, TIMING.grace + TIMING.window + 0.5)

    def test_session_that_ignores_the_frame_is_closed_with_1012(self) -> None:
        """A client that does not move within ``move_timeout`` of its frame is
        closed with 1012 (reconnect now, elsewhere)."""
        ((client, link),) = self.sessions(1)
        self.drain.start()
        self.until_told(link, TIMING.grace + TIMING.window + 0.1)
        self.clock.advance(TIMING.move_timeout - 0.01)
        self.assertEqual(link.closes, [])

        self.clock.advance(0.01)

        self.assertEqual(link.closes, [(wire.CLOSE_RESTARTING, "node draining")])
        self.leave(client)
        self.step(0.2)
        report = self.drain.report
        assert report is not None
        self.assertEqual((report.told, report.closed, report.left), (1, 1, 0))

    def test_session_welcomed_during_the_drain_is_told_too(self) -> None:
        """A session whose claim was in flight when the drain began is told
        once welcomed, within what is left of the window."""
        client, link, pending = self.harness.connect("late", "phone")
        self.clients.append(client)
        self.drain.start()
        self.step(TIMING.grace + 3)
        pending.callback(make_claim(3))
        self.step(TIMING.window - 3 + 0.1)

        self.assertEqual(len(self.reconnects(link)), 1)
        self.assertEqual(link.frames[0]["type"], "welcome")
        self.leave(client)


class InFlightTests(DrainHarness):
    """A send accepted before the drain is stored before Kafka is flushed."""

    def test_flush_waits_for_a_send_being_stored(self) -> None:
        """The drain waits for a send still being stored, even after its
        connection left, then flushes the notices it queued."""
        ((client, _),) = self.sessions(1)
        client.on_text('{"type":"send","to":"bob","id":"c1","body":1}')
        self.assertEqual(self.harness.gateway.in_flight.count, 1)
        done = self.drain.start()
        self.step(TIMING.grace + TIMING.window)
        self.leave(client)
        self.step(1.0)

        self.assertNoResult(done)
        self.assertEqual(self.producer.flushes, [])

        self.harness.inbox.appends[0][1].callback(appended("9-0", "gw-2"))
        self.step(0.1)

        self.successResultOf(done)
        self.assertEqual(len(self.producer.flushes), 1)
        self.assertEqual(self.harness.gateway.in_flight.count, 0)

    def test_send_acked_on_a_link_still_open(self) -> None:
        """A send being stored when the drain begins is acknowledged on the
        connection, which is told to move only afterwards."""
        ((client, link),) = self.sessions(1)
        client.on_text('{"type":"send","to":"bob","id":"c1","body":1}')
        self.drain.start()
        self.harness.inbox.appends[0][1].callback(appended("9-0"))
        self.assertEqual(link.of_type("ack")[0]["id"], "c1")


class BoundTests(DrainHarness):
    """Every wait of the drain is bounded by its timeout."""

    def test_sessions_that_never_leave_do_not_hold_the_drain(self) -> None:
        """Connections that stay open whatever happens are given up on before
        the bound, leaving room for the flush."""
        opened = self.sessions(2)
        done = self.drain.start()

        self.step(TIMING.timeout - 5.0 + 0.1, every=0.1)

        report = self.successResultOf(done)
        self.assertEqual((report.told, report.closed, report.left), (2, 2, 2))
        self.assertLessEqual(report.seconds, TIMING.timeout)
        self.assertEqual(len(opened), 2)

    def test_a_flush_that_never_returns_is_given_up(self) -> None:
        """A Kafka flush stuck in librdkafka does not hold the drain past its
        own timeout; the report says the records' fate is unknown."""
        self.producer = FakeProducer(answer=None)
        self.drain._producer = self.producer
        done = self.drain.start()
        self.step(TIMING.grace + 0.1)
        self.assertEqual(len(self.producer.flushes), 1)
        timeout = self.producer.flushes[0][0]
        self.assertEqual(timeout, TIMING.flush_timeout)

        self.step(timeout + 1.0)

        self.assertEqual(self.successResultOf(done).unsent, -1)


class LifecycleTests(DrainHarness):
    """The drain as the node's last service, and on an operator's request."""

    def test_stop_service_fires_once_drained(self) -> None:
        """Stopping the service (SIGTERM) runs the drain and fires after it."""
        self.drain.startService()
        ((client, _),) = self.sessions(1)
        stopped = self.drain.stopService()
        self.step(TIMING.grace + 0.1)
        self.assertNoResult(stopped)
        self.step(TIMING.window)
        self.leave(client)
        self.step(0.2)
        self.successResultOf(stopped)
        self.assertNotIn("stop", [e for e, _ in self.events])

    def test_request_stops_the_process_once_drained(self) -> None:
        """A requested drain stops the process when it is done, once."""
        self.drain.startService()
        self.assertTrue(self.drain.request())
        self.assertFalse(self.drain.request())
        self.step(TIMING.grace + 0.2)
        self.assertEqual([e for e, _ in self.events].count("stop"), 1)
        # The stop runs the service's stopService: the finished drain.
        self.successResultOf(self.drain.stopService())

    def test_request_then_sigterm_leaves_the_stop_to_sigterm(self) -> None:
        """A SIGTERM during a requested drain waits for the same drain, and the
        process is not stopped a second time."""
        self.drain.startService()
        self.drain.request()
        stopped = self.drain.stopService()
        self.step(TIMING.grace + 0.2)
        self.successResultOf(stopped)
        self.assertNotIn("stop", [e for e, _ in self.events])

    def test_request_while_the_node_starts_still_stops_it(self) -> None:
        """A drain asked for before the drain service started (the control API
        opens first) still ends with the process stopped."""
        self.drain.request()
        self.step(TIMING.grace + 0.2)
        self.assertEqual([e for e, _ in self.events].count("stop"), 1)
