"""Unit tests for :class:`wsha.broadcast.session.SessionBroadcasts`: where a
session resumes, its catch-up, its switch to live broadcasts, and its acks."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.broadcast_fakes import FakeHistory, bentry
from wsha import wire
from wsha.broadcast.entry import Audience, BroadcastEntry
from wsha.broadcast.feed import BroadcastFeed
from wsha.broadcast.session import SessionBroadcasts

GOLD = Audience("tag", "gold")


class SessionHarness(SynchronousTestCase):
    """A started feed on a fake history, and sessions opened on it."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.history = FakeHistory(last="10-0")
        self.feed = BroadcastFeed(
            self.history, "gw-1", self.clock, batch_size=3, retry_delay=2.0
        )
        self.feed.startService()
        self.sent: dict[str, list[dict[str, Any]]] = {}

    def sink(self, user: str) -> Any:
        """The connection of ``user``'s session: keeps the decoded frames."""
        frames = self.sent.setdefault(user, [])
        return lambda frame: frames.append(json.loads(frame))

    def open(
        self,
        after: str | None = None,
        tags: frozenset[str] = frozenset(),
        user: str = "alice",
    ) -> SessionBroadcasts:
        """Open (not start) the broadcasts of ``user``'s session ``phone``."""
        return self.successResultOf(
            self.feed.open(user, "phone", "7", tags, after, self.sink(user))
        )

    def live(self, **kwargs: Any) -> SessionBroadcasts:
        """A started session whose first read found nothing new."""
        session = self.open(**kwargs)
        session.start()
        self.history.answer()
        self.assertTrue(session.live)
        return session

    def apply(self, *entries: BroadcastEntry) -> None:
        """Have the feed apply ``entries``, each following the one before."""
        for entry in entries:
            self.feed.offer(entry, self.feed.last)

    @property
    def frames(self) -> list[dict[str, Any]]:
        """The frames sent to alice's session, in order."""
        return self.sent.get("alice", [])

    @property
    def ids(self) -> list[str]:
        """The ids of the broadcast frames sent to alice's session, in order."""
        return [frame["id"] for frame in self.frames]


class ResumePointTests(SessionHarness):
    """Where a session's broadcasts start, and what its welcome says."""

    def test_a_new_session_starts_at_the_end_and_keeps_it_as_its_cursor(
        self,
    ) -> None:
        """A session with no cursor starts after the newest broadcast, which is
        stored as its cursor: it never gets the whole history."""
        session = self.open()
        self.assertEqual(
            session.welcome_fields(),
            {"broadcast_after": "10-0", "broadcast_truncated": False},
        )
        self.assertEqual(self.history.cursors[("alice", "phone")], "10-0")
        self.assertEqual(self.history.cursor_calls[0][2], "7")

    def test_a_known_session_resumes_after_its_stored_cursor(self) -> None:
        """A session with a cursor resumes after it."""
        self.history.cursors[("alice", "phone")] = "4-0"
        session = self.open()
        session.start()
        self.assertEqual(session.welcome_fields()["broadcast_after"], "4-0")
        self.assertEqual(self.history.reads[0][0], ("4-0", 3))

    def test_the_clients_own_position_wins(self) -> None:
        """A client that says where it is resumes there; its stored cursor is
        only written if it had none."""
        self.history.cursors[("alice", "phone")] = "4-0"
        session = self.open(after="6-0")
        self.assertEqual(session.welcome_fields()["broadcast_after"], "6-0")
        self.assertEqual(self.history.cursors[("alice", "phone")], "4-0")

    def test_trimmed_history_after_the_cursor_is_reported(self) -> None:
        """If the length limit removed broadcasts after the cursor, the welcome
        says so."""
        self.history.head_value = type(self.history.head_value)("10-0", "5-0")
        self.history.cursors[("alice", "phone")] = "4-0"
        self.assertTrue(self.open().welcome_fields()["broadcast_truncated"])
        self.history.cursors[("alice", "phone")] = "5-0"
        self.assertFalse(self.open().welcome_fields()["broadcast_truncated"])

    def test_an_unreachable_store_fails_the_open(self) -> None:
        """The open fails (the connection is then closed with 1013)."""
        self.history.down = True
        opened = self.feed.open("a", "p", "7", frozenset(), None, self.sink("a"))
        self.failureResultOf(opened)


class CatchUpTests(SessionHarness):
    """Replay from the cursor, then live broadcasts: in order, none twice."""

    def test_replay_then_live(self) -> None:
        """Stored broadcasts after the cursor come first, then live ones."""
        self.history.cursors[("alice", "phone")] = "8-0"
        session = self.open()
        session.start()
        self.history.answer(bentry("9-0"), bentry("10-0"))
        self.assertTrue(session.live)

        self.apply(bentry("11-0"))

        self.assertEqual(self.ids, ["9-0", "10-0", "11-0"])
        self.assertEqual(self.frames[0]["body"], "9-0")
        self.assertEqual(session.last_sent, "11-0")

    def test_full_batches_keep_reading(self) -> None:
        """A full batch is followed by a read after its last id."""
        self.history.cursors[("alice", "phone")] = "5-0"
        session = self.open()
        session.start()
        self.history.answer(bentry("6-0"), bentry("7-0"), bentry("8-0"))
        self.assertFalse(session.live)
        self.assertEqual(self.history.reads[1][0], ("8-0", 3))
        self.history.answer(bentry("9-0"))

        self.assertEqual(self.ids, ["6-0", "7-0", "8-0", "9-0"])
        self.assertTrue(session.live)

    def test_live_broadcasts_during_catch_up_are_read_not_sent_out_of_order(
        self,
    ) -> None:
        """A broadcast the feed applies while the session still reads is read
        from the history after what came before it, never sent ahead of it."""
        self.history.cursors[("alice", "phone")] = "8-0"
        session = self.open()
        session.start()
        self.apply(bentry("11-0"))
        self.assertEqual(self.frames, [])

        self.history.answer(bentry("9-0"), bentry("10-0"))
        self.assertFalse(session.live)
        self.assertEqual(self.history.reads[1][0], ("10-0", 3))
        self.history.answer(bentry("11-0"))

        self.assertTrue(session.live)
        self.apply(bentry("12-0"))
        self.assertEqual(self.ids, ["9-0", "10-0", "11-0", "12-0"])

    def test_live_broadcasts_the_session_already_read_are_skipped(self) -> None:
        """A session ahead of a lagging feed skips what it already passed."""
        session = self.live()
        self.feed.last = "8-0"
        session.last_sent = "11-0"

        self.apply(bentry("9-0"), bentry("11-0"), bentry("12-0"))

        self.assertEqual(self.ids, ["12-0"])

    def test_failed_read_is_retried_and_nothing_overtakes_it(self) -> None:
        """After a failed read, live broadcasts wait for the retried read."""
        self.history.cursors[("alice", "phone")] = "8-0"
        session = self.open()
        session.start()
        self.history.reads[0][1].errback(RuntimeError("boom"))
        self.apply(bentry("11-0"))
        self.assertEqual(self.frames, [])

        self.clock.advance(2.0)
        self.history.answer(bentry("9-0"), bentry("11-0"))

        self.assertEqual(self.ids, ["9-0", "11-0"])
        self.assertTrue(session.live)

    def test_stop_ends_reads_frames_and_retries(self) -> None:
        """A stopped session sends nothing more and leaves the feed."""
        session = self.open()
        session.start()
        self.history.reads[0][1].errback(RuntimeError("boom"))
        session.stop()

        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.apply(bentry("11-0"))
        self.assertEqual(self.frames, [])
        self.assertEqual(self.feed.session_count, 0)


class AudienceTests(SessionHarness):
    """Which broadcasts a session gets, replayed or live."""

    def test_tag_broadcasts_reach_sessions_with_the_tag(self) -> None:
        """A tag broadcast reaches a session whose token carries the tag only."""
        self.history.cursors[("alice", "phone")] = "1-0"
        session = self.open(tags=frozenset({"gold"}))
        session.start()
        self.history.answer(bentry("2-0", GOLD), bentry("3-0", Audience("tag", "x")))
        self.apply(bentry("11-0", GOLD), bentry("12-0", Audience("tag", "x")))

        self.assertEqual(self.ids, ["2-0", "11-0"])

        plain = self.live(user="bob")
        self.apply(bentry("13-0", GOLD), bentry("14-0"))
        self.assertEqual([frame["id"] for frame in self.sent["bob"]], ["14-0"])
        self.assertEqual(plain.last_sent, "14-0")
        self.assertEqual(self.ids, ["2-0", "11-0", "13-0", "14-0"])

    def test_node_broadcasts_reach_sessions_connected_when_sent(self) -> None:
        """A node broadcast reaches sessions on that node that were connected
        when it was sent; one from before the connection is not replayed."""
        here = Audience("node", "gw-1")
        self.history.cursors[("alice", "phone")] = "8-0"
        session = self.open()
        session.start()
        self.history.answer(bentry("9-0", here), bentry("10-0"), bentry("11-0", here))
        self.history.answer()
        self.apply(bentry("12-0", here), bentry("13-0", Audience("node", "gw-2")))

        self.assertEqual(self.ids, ["10-0", "11-0", "12-0"])

    def test_unreadable_audiences_reach_nobody(self) -> None:
        """An entry whose stored audience cannot be read is passed over."""
        self.history.cursors[("alice", "phone")] = "8-0"
        session = self.open()
        session.start()
        self.history.answer(bentry("9-0", None), bentry("10-0"))
        self.assertEqual(self.ids, ["10-0"])
        self.assertEqual(session.last_sent, "10-0")


class AckTests(SessionHarness):
    """The client's broadcast acks move its stored cursor, fenced and checked."""

    def test_ack_is_recorded_with_the_connections_epoch(self) -> None:
        """An ack up to a broadcast sent is stored for this session and epoch."""
        session = self.live()
        self.apply(bentry("11-0"))
        self.assertIsNone(session.acknowledge("11-0"))
        self.assertEqual(self.history.acks, [("alice", "phone", "7", "11-0")])

    def test_ack_beyond_what_was_sent_is_refused(self) -> None:
        """An ack past the last broadcast passed is an error and moves nothing."""
        session = self.live()
        error = session.acknowledge("11-0")
        self.assertEqual(
            error,
            wire.error_frame("bad_frame", "ack beyond the last broadcast delivered"),
        )
        self.assertEqual(self.history.acks, [])

    def test_failed_ack_is_only_logged(self) -> None:
        """An ack Redis cannot take is dropped; the next one carries it forward."""
        session = self.live()
        self.history.down = True
        self.assertIsNone(session.acknowledge("10-0"))
        self.assertEqual(len(self.history.acks), 1)
