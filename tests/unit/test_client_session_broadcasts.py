"""ClientSession with system broadcasts: the welcome, acks and the session's end."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from tests.unit.broadcast_fakes import FakeHistory, bentry
from tests.unit.fakes import FakeLink, GatewayHarness, make_claim
from wsha import wire
from wsha.broadcast.entry import Audience
from wsha.broadcast.feed import BroadcastFeed
from wsha.client_session import ClientSession


def ack(upto: str) -> str:
    """A client broadcast ``ack`` frame as text."""
    return json.dumps({"type": "ack", "broadcast": True, "upto": upto})


class ClientSessionBroadcastTests(SynchronousTestCase):
    """The session wires its broadcasts in after its claim, before its welcome."""

    def setUp(self) -> None:
        self.harness = GatewayHarness()
        self.history = FakeHistory(last="10-0", trimmed="3-0")
        self.feed = BroadcastFeed(self.history, "gw-1", self.harness.clock)
        self.feed.startService()
        self.harness.gateway.broadcasts = self.feed

    def test_welcome_says_where_broadcasts_resume_then_they_follow(self) -> None:
        """The welcome carries ``broadcast_after`` and ``broadcast_truncated``;
        the catch-up starts after it, with the connection's epoch fencing the
        cursor."""
        self.history.cursors[("alice", "phone")] = "2-0"
        _, link = self.harness.online(epoch=12)

        welcome = link.frames[0]
        self.assertEqual(welcome["type"], "welcome")
        self.assertEqual(
            (welcome["broadcast_after"], welcome["broadcast_truncated"]),
            ("2-0", True),
        )
        self.assertEqual(self.history.cursor_calls[0][:3], ("alice", "phone", "12"))
        self.assertEqual(self.history.reads[0][0][0], "2-0")

        self.history.answer(bentry("4-0", body={"n": 1}))
        self.assertEqual(
            link.of_type("broadcast"),
            [
                {
                    "type": "broadcast",
                    "id": "4-0",
                    "from": "ops",
                    "ts": 5,
                    "body": {"n": 1},
                }
            ],
        )

    def test_client_position_and_tags_are_used(self) -> None:
        """``broadcast_after`` from the connection and the token's tags reach the
        session's broadcasts."""
        link = FakeLink()
        client = ClientSession(
            self.harness.gateway,
            link,
            "alice",
            "phone",
            None,
            tags=frozenset({"gold"}),
            broadcast_after="6-0",
        )
        client.start()
        self.harness.registry.claims[-1][1].callback(make_claim(3))

        self.assertEqual(link.frames[0]["broadcast_after"], "6-0")
        self.history.answer(
            bentry("7-0", Audience("tag", "gold")), bentry("8-0", Audience("tag", "x"))
        )
        self.assertEqual([f["id"] for f in link.of_type("broadcast")], ["7-0"])

    def test_broadcast_ack_is_fenced_and_checked(self) -> None:
        """A broadcast ack within what was sent is stored with the epoch; one
        beyond it is answered with bad_frame."""
        client, link = self.harness.online(epoch=12)
        self.history.answer()
        self.feed.offer(bentry("11-0"), "10-0")

        client.on_text(ack("11-0"))
        client.on_text(ack("12-0"))

        self.assertEqual(self.history.acks, [("alice", "phone", "12", "11-0")])
        (error,) = link.of_type("error")
        self.assertEqual(error["code"], "bad_frame")

    def test_closing_stops_the_broadcasts(self) -> None:
        """A closed connection leaves the feed and gets nothing more."""
        client, link = self.harness.online()
        self.history.answer()
        self.assertEqual(self.feed.session_count, 1)

        client.connection_lost()
        self.feed.offer(bentry("11-0"), "10-0")

        self.assertEqual(self.feed.session_count, 0)
        self.assertEqual(link.of_type("broadcast"), [])

    def test_unreadable_cursor_closes_with_try_later(self) -> None:
        """If the broadcast cursor cannot be read, the client is told to come back
        later (1013) and gets no welcome."""
        self.history.down = True
        _, link = self.harness.online()
        self.assertEqual(link.frames, [])
        self.assertEqual(link.closes[0][0], wire.CLOSE_TRY_LATER)

    def test_connection_closed_during_the_cursor_read_gets_no_welcome(self) -> None:
        """A connection that closed while its cursor was read is not greeted."""
        client, link, pending = self.harness.connect()
        read = self.feed.open

        def close_then_open(*args: object) -> object:
            client.connection_lost()
            return read(*args)  # type: ignore[arg-type]

        self.feed.open = close_then_open  # type: ignore[method-assign]
        pending.callback(make_claim(3))

        self.assertEqual(link.frames, [])
        self.assertEqual(self.feed.session_count, 0)


class WithoutBroadcastsTests(SynchronousTestCase):
    """A gateway without broadcasts keeps the welcome as it was."""

    def test_no_broadcast_fields_and_acks_not_served(self) -> None:
        """Without a feed the welcome has no broadcast fields, and a broadcast
        ack is answered as not served."""
        harness = GatewayHarness()
        client, link = harness.online()
        self.assertNotIn("broadcast_after", link.frames[0])

        client.on_text(ack("1-0"))

        self.assertEqual(link.of_type("error")[0]["code"], "unknown_type")
