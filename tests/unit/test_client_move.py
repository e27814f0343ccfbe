"""Unit tests for the client's make-before-break move (:mod:`wsha.client_move`):
a ``reconnect`` frame opens a new connection before the old one goes, and the
old one's 4001 is expected, not a stop."""

from __future__ import annotations

from typing import Any

from tests.unit.test_client import ClientHarness, FakeLink
from wsha import wire
from wsha.client_move import RETIRE_TIMEOUT

RECONNECT = {"type": "reconnect", "reason": "draining", "within_ms": 5000}


class MoveHarness(ClientHarness):
    """A welcomed client, with helpers for the move's new link."""

    def setUp(self) -> None:
        super().setUp()
        self.stopped: list[int | None] = []
        self.disconnects: list[int | None] = []
        self.client.on_stopped = lambda code, reason: self.stopped.append(code)
        self.client.on_disconnected = lambda code, reason: self.disconnects.append(code)
        self.old = self.open()
        self.old.factory = self.attempt_factory(0)
        self.welcome(self.old)

    def attempt_factory(self, index: int) -> Any:
        """The WebSocket factory of the index-th connection attempt."""
        return self.reactor.tcpClients[index][2]._wrappedFactory

    def ask_to_move(self) -> None:
        """The node sends ``reconnect`` on the old link."""
        self.client._frame(self.old, dict(RECONNECT))

    def open_new(self, index: int = 1) -> FakeLink:
        """The index-th connection attempt opens its link (not welcomed yet)."""
        link = FakeLink()
        link.factory = self.attempt_factory(index)
        self.client._opened(link)
        return link

    def delivered(self) -> list[str]:
        """The ids of the messages handed to the application."""
        return [m["id"] for m in self.messages]


class MakeBeforeBreakTests(MoveHarness):
    """The new link is made before the old one is let go."""

    def test_reconnect_opens_a_new_connection_resuming_after_the_last_id(
        self,
    ) -> None:
        """The frame starts a connection to the same URL with ``after`` set,
        and the old link stays the one sends are written on."""
        self.message(self.old, "5-0")

        self.ask_to_move()

        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertEqual(self.connect_query(1)["after"], ["5-0"])
        self.client.send("bob", 1, "c1")
        new = self.open_new()
        self.client.send("bob", 2, "c2")
        self.assertEqual([f["id"] for f in self.old.sent], ["c1", "c2"])
        self.assertEqual(new.sent, [])

    def test_old_link_delivers_nothing_once_the_move_began(self) -> None:
        """Messages still arriving on the old link are not handed over (nor
        counted as duplicates): the new link resumes from before them."""
        self.message(self.old, "5-0")
        self.ask_to_move()
        self.message(self.old, "6-0")
        self.client._frame(self.old, {"type": "broadcast", "id": "2-0", "body": 1})
        new = self.open_new()
        self.welcome(new)
        self.message(new, "6-0")
        self.message(new, "7-0")

        self.assertEqual(self.delivered(), ["5-0", "6-0", "7-0"])
        self.assertEqual(self.client.stats.duplicates_dropped, 0)
        self.assertEqual(self.client.stats.broadcasts, 0)

    def test_welcome_on_the_new_link_switches_and_resends_unacknowledged(
        self,
    ) -> None:
        """Once welcomed, the new link is the current one: sends still
        unacknowledged go again there, oldest first."""
        self.ask_to_move()
        self.client.send("bob", 1, "c1")
        new = self.open_new()

        self.welcome(new)

        self.assertEqual([f["id"] for f in new.sent], ["c1"])
        self.client.send("bob", 2, "c2")
        self.assertEqual([f["id"] for f in new.sent], ["c1", "c2"])
        self.assertEqual(self.client.stats.moves, 1)

    def test_4001_on_the_old_link_after_the_move_is_expected(self) -> None:
        """The old node closing the old link with 4001 (the new claim took over)
        neither stops the client nor reconnects it."""
        self.ask_to_move()
        new = self.open_new()
        self.welcome(new)

        self.client._closed(self.old, wire.CLOSE_TAKEN_OVER, "session taken over")
        self.reactor.advance(60)

        self.assertEqual((self.stopped, self.disconnects), ([], []))
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertIsNotNone(self.client.welcome)

    def test_4001_before_the_new_welcome_is_expected_too(self) -> None:
        """The takeover may close the old link before the new one's welcome
        arrives: the client waits for that welcome instead of stopping."""
        self.ask_to_move()
        new = self.open_new()
        self.client._closed(self.old, wire.CLOSE_TAKEN_OVER, "session taken over")
        self.reactor.advance(5)
        self.assertEqual((self.stopped, self.disconnects), ([], []))
        self.assertEqual(len(self.reactor.tcpClients), 2)

        self.welcome(new)

        self.assertIsNotNone(self.client.welcome)
        self.client.send("bob", 1, "c1")
        self.assertEqual([f["id"] for f in new.sent], ["c1"])

    def test_4001_on_a_link_that_was_not_moving_still_stops(self) -> None:
        """Outside a move, 4001 means another device took the session: stop."""
        self.client._closed(self.old, wire.CLOSE_TAKEN_OVER, "taken over")
        self.assertEqual(self.stopped, [wire.CLOSE_TAKEN_OVER])

    def test_old_link_left_open_is_closed_by_the_client(self) -> None:
        """An old link its node never closes is closed by the client after
        :data:`RETIRE_TIMEOUT`."""
        self.ask_to_move()
        self.welcome(self.open_new())
        self.reactor.advance(RETIRE_TIMEOUT - 0.1)
        self.assertEqual(self.old.closes, [])
        self.reactor.advance(0.1)
        self.assertEqual(self.old.closes, [wire.CLOSE_NORMAL])
        self.client._closed(self.old, wire.CLOSE_NORMAL, "bye")
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_second_reconnect_frame_is_ignored(self) -> None:
        """A move under way is not started again."""
        self.ask_to_move()
        self.ask_to_move()
        self.assertEqual(len(self.reactor.tcpClients), 2)


class FailedMoveTests(MoveHarness):
    """A new connection that fails is tried again while the old link lives."""

    def test_refused_new_link_is_tried_again_and_the_old_one_kept(self) -> None:
        """A 1012 on the new link before its welcome (it landed on a draining
        node) leads to another attempt after a backoff; the old link stays."""
        self.ask_to_move()
        new = self.open_new()
        self.client._closed(new, wire.CLOSE_RESTARTING, "node is draining")

        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.reactor.advance(0.2)
        self.assertEqual(len(self.reactor.tcpClients), 3)
        self.client.send("bob", 1, "c1")
        self.assertEqual([f["id"] for f in self.old.sent], ["c1"])
        self.assertEqual((self.stopped, self.disconnects), ([], []))

        again = self.open_new(2)
        self.welcome(again)
        self.assertEqual(self.client.stats.moves, 1)

    def test_failed_connect_is_tried_again(self) -> None:
        """A connect that fails outright is retried like a refused link."""
        self.ask_to_move()
        self.client._connect_failed(_Reason(), self.attempt_factory(1))
        self.reactor.advance(0.2)
        self.assertEqual(len(self.reactor.tcpClients), 3)

    def test_old_link_closed_between_attempts_reconnects_now(self) -> None:
        """With no attempt under way, losing the old link (its node ended the
        wait with 1012, or the earlier attempt's claim took it) reconnects
        within a second, resuming from before the move."""
        self.message(self.old, "5-0")
        self.ask_to_move()
        self.message(self.old, "6-0")
        self.client._closed(self.open_new(), wire.CLOSE_TRY_LATER, "busy")
        self.client._closed(self.old, wire.CLOSE_TAKEN_OVER, "session taken over")

        self.assertEqual(self.stopped, [])
        self.reactor.advance(1.0)
        self.assertEqual(len(self.reactor.tcpClients), 3)
        self.assertEqual(self.connect_query(2)["after"], ["5-0"])

    def test_new_link_lost_after_the_old_one_is_an_ordinary_loss(self) -> None:
        """Once the old link is gone too, the attempt's failure is handled like
        any lost connection: backoff and reconnect."""
        self.ask_to_move()
        new = self.open_new()
        self.client._closed(self.old, wire.CLOSE_TAKEN_OVER, "session taken over")
        self.client._closed(new, wire.CLOSE_SERVER_ERROR, "oops")

        self.assertEqual(self.disconnects, [wire.CLOSE_SERVER_ERROR])
        self.reactor.advance(0.2)
        self.assertEqual(len(self.reactor.tcpClients), 3)

    def test_stop_during_a_move_closes_the_new_link(self) -> None:
        """stop() closes the new link as well as the old one, and cancels retries."""
        self.ask_to_move()
        new = self.open_new()
        self.client.stop()
        self.assertEqual(new.closes, [wire.CLOSE_NORMAL])
        self.assertEqual(self.old.closes, [wire.CLOSE_NORMAL])
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class _Reason:
    """A connect failure, as the endpoint's errback passes it."""

    def getErrorMessage(self) -> str:
        """Say why."""
        return "connection refused"
