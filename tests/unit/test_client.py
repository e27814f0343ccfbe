"""Unit tests for :mod:`wsha.client`: backoff and the client's frame handling.

The client is driven through its ``_opened``/``_frame``/``_closed`` hooks with
a fake link, on a MemoryReactorClock that records connection attempts.
"""

from __future__ import annotations

import json
import random
from typing import Any
from urllib.parse import parse_qs, urlparse

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from wsha import wire
from wsha.client import Backoff, GatewayClient, SendRejected


class HighestRng(random.Random):
    """A random source whose ``uniform`` always returns the top of the range."""

    def uniform(self, a: float, b: float) -> float:
        """Return ``b``, the largest value the range allows."""
        return b


class FakeTransport:
    """The part of a TCP transport the client touches."""

    def __init__(self) -> None:
        self.aborted = False
        self.paused = False

    def abortConnection(self) -> None:
        """Record the abort."""
        self.aborted = True

    def pauseProducing(self) -> None:
        """Record the pause."""
        self.paused = True


class FakeLink:
    """A stand-in for the client's WebSocket protocol."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closes: list[int | None] = []
        self.transport = FakeTransport()
        self.state = WebSocketProtocol.STATE_OPEN

    def sendMessage(self, payload: bytes, isBinary: bool = False) -> None:
        """Keep the decoded text frame."""
        assert not isBinary
        self.sent.append(json.loads(payload))

    def sendClose(self, code: int | None = None, reason: str | None = None) -> None:
        """Keep the close code."""
        self.closes.append(code)


class BackoffTests(SynchronousTestCase):
    """Capped exponential backoff with full jitter."""

    def test_bounds_double_up_to_the_cap(self) -> None:
        """Each delay's upper bound doubles from base until it reaches cap."""
        backoff = Backoff(base=0.5, cap=5.0)
        delays = [backoff.next_delay(HighestRng()) for _ in range(6)]
        self.assertEqual(delays, [0.5, 1.0, 2.0, 4.0, 5.0, 5.0])

    def test_full_jitter_stays_within_bounds(self) -> None:
        """Random delays are never negative nor above min(cap, base * 2^n)."""
        backoff = Backoff(base=0.2, cap=3.0)
        rng = random.Random(1)
        for attempt in range(40):
            delay = backoff.next_delay(rng)
            self.assertTrue(0 <= delay <= min(3.0, 0.2 * 2**attempt))

    def test_reset_starts_over(self) -> None:
        """After reset() the next delay is bounded by base again."""
        backoff = Backoff(base=0.2, cap=15.0)
        for _ in range(5):
            backoff.next_delay(HighestRng())
        backoff.reset()
        self.assertEqual(backoff.attempts, 0)
        self.assertEqual(backoff.next_delay(HighestRng()), 0.2)

    def test_long_outage_does_not_overflow(self) -> None:
        """Thousands of failed attempts still give the capped delay."""
        backoff = Backoff(base=0.2, cap=15.0, attempts=5000)
        self.assertEqual(backoff.next_delay(HighestRng()), 15.0)


class ClientHarness(SynchronousTestCase):
    """Resume, resend, dedupe and reconnect decisions of GatewayClient."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.messages: list[dict[str, Any]] = []
        self.client = GatewayClient(
            self.reactor,
            "ws://127.0.0.1:8080/ws",
            "tok",
            "phone",
            self.messages.append,
            after="3-0",
            rng=HighestRng(),
        )

    def connect_query(self, index: int) -> dict[str, list[str]]:
        """The query string of the index-th connection attempt."""
        host, port, factory = self.reactor.tcpClients[index][:3]
        self.assertEqual((host, port), ("127.0.0.1", 8080))
        return parse_qs(urlparse(factory._wrappedFactory.url).query)

    def open(self) -> FakeLink:
        """Start the client and open a link on it, without welcome yet."""
        self.client.start()
        link = FakeLink()
        self.client._opened(link)
        return link

    def welcome(self, link: FakeLink) -> None:
        """Deliver a welcome frame on ``link``."""
        self.client._frame(link, {"type": "welcome", "epoch": 1})

    def message(self, link: FakeLink, entry_id: str) -> None:
        """Deliver a message frame with inbox id ``entry_id``."""
        self.client._frame(link, {"type": "message", "id": entry_id, "body": entry_id})


class GatewayClientTests(ClientHarness):
    """The client's contract: resume, retries, acks, backoff."""

    def test_connect_carries_token_session_and_after(self) -> None:
        """The connection URL names the token, the session and the resume point."""
        self.client.start()
        self.assertEqual(
            self.connect_query(0),
            {"token": ["tok"], "session": ["phone"], "after": ["3-0"]},
        )

    def test_pending_sends_are_resent_on_welcome(self) -> None:
        """Sends made while not welcomed go out, in order, once the welcome arrives."""
        link = self.open()
        first = self.client.send("bob", {"n": 1}, "c1")
        self.client.send("bob", {"n": 2}, "c2")
        self.assertEqual(link.sent, [])
        connected = self.client.when_connected()

        self.welcome(link)

        self.assertEqual([f["id"] for f in link.sent], ["c1", "c2"])
        self.assertEqual(
            link.sent[0], {"type": "send", "to": "bob", "id": "c1", "body": {"n": 1}}
        )
        # Never written before, so not counted as resent.
        self.assertEqual(self.client.stats.resends, 0)
        self.assertEqual(self.successResultOf(connected)["epoch"], 1)

        ack = {"type": "ack", "id": "c1", "inbox": "9-0", "duplicate": False}
        self.client._frame(link, ack)
        self.assertEqual(self.successResultOf(first), ack)
        self.assertEqual(self.client.unacknowledged, 1)

    def test_send_while_welcomed_is_written_at_once(self) -> None:
        """A send on a welcomed link is written immediately and kept until acked."""
        link = self.open()
        self.welcome(link)
        d = self.client.send("bob", "hi", "c9")
        self.assertEqual(link.sent[-1]["id"], "c9")
        self.assertNoResult(d)

    def test_final_error_fails_the_send(self) -> None:
        """An error with retry false fails the send with SendRejected."""
        link = self.open()
        self.welcome(link)
        d = self.client.send("b b", "hi", "c1")
        self.client._frame(link, wire.error_frame("bad_recipient", "no", "c1"))
        self.assertEqual(
            self.failureResultOf(d, SendRejected).value.code, "bad_recipient"
        )
        self.assertEqual(self.client.unacknowledged, 0)

    def test_retryable_error_resends_later(self) -> None:
        """An error with retry true keeps the send and writes it again after a pause."""
        link = self.open()
        self.welcome(link)
        d = self.client.send("bob", "hi", "c1")
        self.client._frame(link, wire.error_frame("unavailable", "down", "c1"))
        self.assertEqual(len(link.sent), 1)

        self.reactor.advance(0.5)

        self.assertEqual([f["id"] for f in link.sent], ["c1", "c1"])
        self.assertNoResult(d)

    def test_retryable_error_holds_later_sends_and_resends_in_order(self) -> None:
        """After a retryable error, new sends wait, and everything unacknowledged
        goes again oldest first, so the gateway stores them in the order sent."""
        link = self.open()
        self.welcome(link)
        self.client.send("bob", 1, "c1")
        self.client.send("bob", 2, "c2")
        self.client._frame(link, wire.error_frame("unavailable", "down", "c1"))
        self.client._frame(link, wire.error_frame("unavailable", "down", "c2"))
        self.client.send("bob", 3, "c3")
        self.assertEqual([f["id"] for f in link.sent], ["c1", "c2"])

        self.reactor.advance(0.5)

        self.assertEqual([f["id"] for f in link.sent], ["c1", "c2", "c1", "c2", "c3"])

    def test_resends_back_off_while_errors_repeat_and_reset_on_ack(self) -> None:
        """Repeated retryable errors space resends out; an ack resets the pace."""
        link = self.open()
        self.welcome(link)
        self.client.send("bob", 1, "c1")
        self.client._frame(link, wire.error_frame("unavailable", "down", "c1"))
        self.reactor.advance(0.5)
        self.client._frame(link, wire.error_frame("unavailable", "down", "c1"))
        self.reactor.advance(0.5)
        self.assertEqual(len(link.sent), 2)
        self.reactor.advance(0.5)
        self.assertEqual(len(link.sent), 3)
        self.client._frame(link, {"type": "ack", "id": "c1", "inbox": "1-0"})
        self.assertEqual(self.client.send_backoff.attempts, 0)

    def test_duplicate_and_old_messages_are_dropped_and_counted(self) -> None:
        """Messages not after the last id seen are dropped; ids compare numerically."""
        link = self.open()
        self.welcome(link)
        for entry_id in ("2-0", "3-0", "9-0", "10-0", "9-5", "10-0", "10-1"):
            self.message(link, entry_id)

        self.assertEqual([m["id"] for m in self.messages], ["9-0", "10-0", "10-1"])
        self.assertEqual(self.client.stats.duplicates_dropped, 4)
        self.assertEqual(self.client.last_id, "10-1")

    def test_received_messages_are_acknowledged_in_one_ack(self) -> None:
        """Messages are acknowledged together, up to the last, after ack_interval."""
        link = self.open()
        self.welcome(link)
        self.message(link, "4-0")
        self.message(link, "5-0")
        self.assertEqual(link.sent, [])

        self.reactor.advance(0.05)

        self.assertEqual(link.sent, [{"type": "ack", "upto": "5-0"}])

    def test_taken_over_stops_reconnecting(self) -> None:
        """Close code 4001 stops the client and reports it; nothing is scheduled."""
        stopped: list[int | None] = []
        self.client.on_stopped = lambda code, reason: stopped.append(code)
        link = self.open()
        self.client._closed(link, wire.CLOSE_TAKEN_OVER, "taken over")

        self.reactor.advance(60)

        self.assertEqual(stopped, [wire.CLOSE_TAKEN_OVER])
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(self.client.stats.closes, {wire.CLOSE_TAKEN_OVER: 1})

    def test_other_close_reconnects_after_backoff(self) -> None:
        """A server error close reconnects after the backoff delay, resuming after."""
        link = self.open()
        self.welcome(link)
        self.message(link, "8-0")
        self.client._closed(link, wire.CLOSE_SERVER_ERROR, "oops")

        self.reactor.advance(0.19)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.reactor.advance(0.01)

        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertEqual(self.connect_query(1)["after"], ["8-0"])

    def test_restarting_close_reconnects_within_a_second(self) -> None:
        """Close code 1012 reconnects after a jitter of at most one second."""
        link = self.open()
        self.client.backoff.attempts = 10
        self.client._closed(link, wire.CLOSE_RESTARTING, "draining")
        self.reactor.advance(1.0)
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_close_of_a_replaced_link_is_ignored(self) -> None:
        """A late close from an old link does not disturb the current one."""
        old = self.open()
        new = FakeLink()
        self.client._opened(new)
        self.client._closed(old, wire.CLOSE_SERVER_ERROR, "old")
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.welcome(new)
        self.assertIsNotNone(self.client.welcome)

    def test_stop_closes_normally_and_cancels_reconnect(self) -> None:
        """stop() sends close 1000 and no reconnect follows."""
        link = self.open()
        self.client.stop()
        self.client._closed(link, wire.CLOSE_NORMAL, "bye")
        self.reactor.advance(60)
        self.assertEqual(link.closes, [wire.CLOSE_NORMAL])
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class ResyncAndQueueTests(ClientHarness):
    """The application hears when a resume failed, and the send queue is bounded."""

    def test_truncated_welcome_signals_a_resync(self) -> None:
        """A welcome saying messages were trimmed calls ``on_resync`` with it."""
        seen: list[dict[str, Any]] = []
        self.client.on_resync = seen.append
        link = self.open()
        self.client._frame(link, {"type": "welcome", "epoch": 1, "truncated": True})
        self.assertEqual(len(seen), 1)
        self.assertTrue(seen[0]["truncated"])

    def test_honoured_resume_does_not_signal_a_resync(self) -> None:
        """An ordinary welcome leaves ``on_resync`` alone."""
        seen: list[dict[str, Any]] = []
        self.client.on_resync = seen.append
        link = self.open()
        self.client._frame(link, {"type": "welcome", "epoch": 1, "truncated": False})
        self.assertEqual(seen, [])

    def test_send_past_the_queue_limit_fails_at_once(self) -> None:
        """Past ``max_pending`` unacknowledged sends, a new send fails with
        queue_full and the queued ones are kept."""
        self.client.outbox.max_pending = 2
        self.open()
        first = self.client.send("bob", 1, client_id="a")
        self.client.send("bob", 2, client_id="b")
        third = self.client.send("bob", 3, client_id="c")
        self.assertEqual(
            self.failureResultOf(third, SendRejected).value.code, "queue_full"
        )
        self.assertNoResult(first)
        self.assertEqual(self.client.unacknowledged, 2)

    def test_resending_a_queued_id_shares_its_answer(self) -> None:
        """A second send of an id already queued is not refused at the limit,
        is not queued twice, and both callers get the one ack."""
        self.client.outbox.max_pending = 1
        link = self.open()
        self.welcome(link)
        first = self.client.send("bob", 1, client_id="a")
        again = self.client.send("bob", 1, client_id="a")
        self.assertNoResult(again)
        self.assertEqual(self.client.unacknowledged, 1)
        self.client._frame(link, {"type": "ack", "id": "a", "inbox": "5-0"})
        self.assertEqual(self.successResultOf(first)["inbox"], "5-0")
        self.assertEqual(self.successResultOf(again)["inbox"], "5-0")


class ClosingLinkTests(ClientHarness):
    """Nothing is written to a link that is closing, and nothing is lost for it."""

    def test_send_on_a_closing_link_is_kept_not_raised(self) -> None:
        """A send while the server's close is under way stays pending and goes
        out on the next welcome."""
        link = self.open()
        self.welcome(link)
        link.state = WebSocketProtocol.STATE_CLOSING
        d = self.client.send("bob", 1, "c1")
        self.assertEqual(link.sent, [])
        self.assertNoResult(d)
        fresh = FakeLink()
        self.client._opened(fresh)
        self.welcome(fresh)
        self.assertEqual([f["id"] for f in fresh.sent], ["c1"])

    def test_ack_not_written_is_sent_again(self) -> None:
        """An ack cursor that could not be written is not counted as sent."""
        link = self.open()
        self.welcome(link)
        self.message(link, "4-0")
        link.state = WebSocketProtocol.STATE_CLOSING
        self.reactor.advance(1)
        link.state = WebSocketProtocol.STATE_OPEN
        self.message(link, "5-0")
        self.reactor.advance(1)
        self.assertEqual([f["upto"] for f in link.sent if f["type"] == "ack"], ["5-0"])


class InFlightWindowTests(ClientHarness):
    """At most ``max_in_flight`` sends are written and unanswered at once."""

    def test_sends_past_the_window_wait_for_answers_in_order(self) -> None:
        """With a window of 2, a third send is written only once one is acked."""
        self.client.outbox.max_in_flight = 2
        link = self.open()
        self.welcome(link)
        for i in (1, 2, 3):
            self.client.send("bob", i, f"c{i}")
        self.assertEqual([f["id"] for f in link.sent], ["c1", "c2"])
        self.client._frame(link, {"type": "ack", "id": "c1", "inbox": "1-0"})
        self.assertEqual([f["id"] for f in link.sent], ["c1", "c2", "c3"])

    def test_reconnect_sends_everything_again_in_order_within_the_window(
        self,
    ) -> None:
        """After a new welcome, unacknowledged sends go again oldest first, and
        only what was written before counts as resent."""
        self.client.outbox.max_in_flight = 2
        link = self.open()
        self.welcome(link)
        for i in (1, 2, 3):
            self.client.send("bob", i, f"c{i}")
        fresh = FakeLink()
        self.client._opened(fresh)
        self.welcome(fresh)
        self.assertEqual([f["id"] for f in fresh.sent], ["c1", "c2"])
        self.assertEqual(self.client.stats.resends, 2)


class GatewayClientBroadcastTests(ClientHarness):
    """Broadcasts: handed over once each, in order, acknowledged, resumed."""

    def setUp(self) -> None:
        super().setUp()
        self.broadcasts: list[dict[str, Any]] = []
        self.client.on_broadcast = self.broadcasts.append

    def broadcast(self, link: FakeLink, entry_id: str) -> None:
        """Deliver a broadcast frame with history id ``entry_id``."""
        self.client._frame(link, {"type": "broadcast", "id": entry_id, "body": 1})

    def test_broadcasts_are_handed_over_once_in_order(self) -> None:
        """Broadcasts not after the last one handled are dropped and counted."""
        link = self.open()
        self.client._frame(link, {"type": "welcome", "broadcast_after": "1-0"})
        for entry_id in ("1-0", "2-0", "10-0", "9-9", "10-0", "10-1"):
            self.broadcast(link, entry_id)

        self.assertEqual([b["id"] for b in self.broadcasts], ["2-0", "10-0", "10-1"])
        self.assertEqual(self.client.stats.broadcasts, 3)
        self.assertEqual(self.client.stats.broadcast_duplicates_dropped, 3)
        self.assertEqual(self.messages, [])

    def test_broadcasts_are_acknowledged_apart_from_messages(self) -> None:
        """Broadcasts get their own ack, with ``broadcast`` true, after the
        ack interval; the welcome's starting point is not acknowledged."""
        link = self.open()
        self.client._frame(link, {"type": "welcome", "broadcast_after": "1-0"})
        self.message(link, "4-0")
        self.broadcast(link, "2-0")
        self.broadcast(link, "3-0")

        self.reactor.advance(0.05)

        self.assertEqual(
            link.sent,
            [
                {"type": "ack", "upto": "4-0"},
                {"type": "ack", "broadcast": True, "upto": "3-0"},
            ],
        )
        self.reactor.advance(1.0)
        self.assertEqual(len(link.sent), 2)

    def test_reconnect_resumes_after_the_last_broadcast(self) -> None:
        """The next connection carries ``broadcast_after``: the last broadcast
        handled, or where the welcome said broadcasts started."""
        link = self.open()
        self.client._frame(link, {"type": "welcome", "broadcast_after": "1-0"})
        self.client._closed(link, 1006, None)
        self.reactor.advance(15)
        self.assertEqual(self.connect_query(1)["broadcast_after"], ["1-0"])

        fresh = FakeLink()
        self.client._opened(fresh)
        self.client._frame(fresh, {"type": "welcome", "broadcast_after": "1-0"})
        self.broadcast(fresh, "7-0")
        self.client._closed(fresh, 1006, None)
        self.reactor.advance(15)
        self.assertEqual(self.connect_query(2)["broadcast_after"], ["7-0"])

    def test_a_known_position_is_kept_over_the_welcome(self) -> None:
        """A client that knows its position resumes from it, whatever the
        welcome's starting point."""
        self.client.last_broadcast_id = "5-0"
        link = self.open()
        self.assertEqual(self.connect_query(0)["broadcast_after"], ["5-0"])
        self.client._frame(link, {"type": "welcome", "broadcast_after": "5-0"})
        self.assertEqual(self.client.last_broadcast_id, "5-0")
