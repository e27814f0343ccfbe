"""Unit tests for :class:`wsha.broadcast.feed.BroadcastFeed`: order and gaps."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.broadcast_fakes import FakeHistory, RecordingSession, bentry
from wsha import topics
from wsha.broadcast.entry import Audience
from wsha.broadcast.feed import BroadcastFeed


def record(entry_id: str, prev: str, audience: Audience | None = None) -> bytes:
    """The Kafka record announcing entry ``entry_id`` that follows ``prev``."""
    entry = bentry(entry_id) if audience is None else bentry(entry_id, audience)
    return topics.encode_broadcast_record(entry, prev)


class FeedTests(SynchronousTestCase):
    """Records that follow the last id apply at once; anything else reads the
    history after it, one read at a time."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.history = FakeHistory(last="10-0")
        self.feed = BroadcastFeed(
            self.history, "gw-1", self.clock, batch_size=3, retry_delay=2.0
        )
        self.feed.startService()
        self.session = RecordingSession()
        self.feed.register(self.session)  # type: ignore[arg-type]

    def test_starts_at_the_end_of_the_history(self) -> None:
        """A starting feed takes the newest history id as read: nothing replays."""
        self.assertEqual(self.feed.last, "10-0")
        self.assertEqual(self.history.reads, [])

    def test_start_without_the_history_end_reads_it_all_later(self) -> None:
        """If the end cannot be read at start, the feed starts before everything."""
        history = FakeHistory(last="10-0")
        history.down = True
        feed = BroadcastFeed(history, "gw-1", Clock())
        feed.startService()
        self.assertEqual(feed.last, "0-0")
        self.assertTrue(feed.running)

    def test_record_that_follows_the_last_id_is_applied_without_a_read(self) -> None:
        """A record whose ``prev`` is the last id applied is offered at once,
        encoded as the client frame."""
        self.feed.on_record(record("11-0", "10-0"))

        self.assertEqual(self.history.reads, [])
        self.assertEqual(self.feed.last, "11-0")
        (entry_id, frame), *_ = self.session.offered
        self.assertEqual(entry_id, "11-0")
        self.assertEqual(
            json.loads(frame),
            {"type": "broadcast", "id": "11-0", "from": "ops", "ts": 5, "body": "11-0"},
        )

    def test_a_gap_is_read_from_the_history_in_order(self) -> None:
        """A record after an unseen one makes the feed read after its last id;
        the missed entry and the record's are applied in history order."""
        self.feed.on_record(record("13-0", "12-0"))

        self.assertEqual(self.session.offered, [])
        self.assertEqual(self.history.reads[0][0], ("10-0", 3))
        self.history.answer(bentry("12-0"), bentry("13-0"))

        self.assertEqual(self.session.ids, ["12-0", "13-0"])
        self.assertEqual(self.feed.last, "13-0")
        self.assertEqual(len(self.history.reads), 1)

    def test_records_during_a_read_are_read_again_not_applied_out_of_turn(
        self,
    ) -> None:
        """While a read is in flight, even a record that follows the last id
        waits: the read goes on after it finishes, so nothing overtakes."""
        self.feed.on_record(record("12-0", "11-0"))
        self.feed.on_record(record("11-0", "10-0"))
        self.feed.on_record(record("13-0", "12-0"))
        self.assertEqual(len(self.history.reads), 1)

        self.history.answer(bentry("11-0"), bentry("12-0"))
        self.assertEqual(self.history.reads[1][0], ("12-0", 3))
        self.history.answer(bentry("13-0"))

        self.assertEqual(self.session.ids, ["11-0", "12-0", "13-0"])
        self.assertEqual(len(self.history.reads), 2)

    def test_old_and_repeated_records_are_ignored(self) -> None:
        """A record at or below the last id applied changes nothing."""
        self.feed.on_record(record("11-0", "10-0"))
        self.feed.on_record(record("11-0", "10-0"))
        self.feed.on_record(record("9-0", "8-0"))

        self.assertEqual(self.session.ids, ["11-0"])
        self.assertEqual(self.history.reads, [])

    def test_records_in_reverse_order_are_applied_once_in_order(self) -> None:
        """Records from two senders that reach Kafka swapped still reach the
        sessions in history order, once each."""
        self.feed.on_record(record("12-0", "11-0"))
        self.history.answer(bentry("11-0"), bentry("12-0"))
        self.feed.on_record(record("11-0", "10-0"))

        self.assertEqual(self.session.ids, ["11-0", "12-0"])

    def test_full_batches_keep_reading(self) -> None:
        """A full batch is followed by a read after its last id."""
        self.feed.catch_up()
        self.history.answer(bentry("11-0"), bentry("12-0"), bentry("13-0"))
        self.assertEqual(self.history.reads[1][0], ("13-0", 3))
        self.history.answer()

        self.assertEqual(self.session.ids, ["11-0", "12-0", "13-0"])
        self.assertEqual(len(self.history.reads), 2)

    def test_failed_read_is_retried_and_holds_records_back(self) -> None:
        """After a failed read, records wait for the retry, which reads the gap."""
        self.feed.catch_up()
        self.history.reads[0][1].errback(RuntimeError("boom"))
        self.feed.on_record(record("11-0", "10-0"))
        self.assertEqual(len(self.history.reads), 1)
        self.assertEqual(self.session.offered, [])

        self.clock.advance(2.0)

        self.assertEqual(self.history.reads[1][0], ("10-0", 3))
        self.history.answer(bentry("11-0"))
        self.assertEqual(self.session.ids, ["11-0"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_node_audiences_reach_only_their_node(self) -> None:
        """A broadcast for another node moves the feed on without offering it; one
        for this node is offered."""
        self.feed.on_record(record("11-0", "10-0", Audience("node", "gw-2")))
        self.feed.on_record(record("12-0", "11-0", Audience("node", "gw-1")))

        self.assertEqual(self.session.ids, ["12-0"])
        self.assertEqual(self.feed.last, "12-0")

    def test_malformed_records_are_ignored(self) -> None:
        """A record that is not a broadcast is logged and skipped."""
        for raw in (b"not json", b'{"kind": "inbox", "user": "a"}', b"[]"):
            self.feed.on_record(raw)
        bad: dict[str, Any] = json.loads(record("11-0", "10-0"))
        bad["prev"] = "yesterday"
        self.feed.on_record(json.dumps(bad).encode())

        self.assertEqual(self.session.offered, [])
        self.assertEqual(self.history.reads, [])
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_unregistered_sessions_are_offered_nothing(self) -> None:
        """A session that left the feed gets no more broadcasts."""
        self.feed.unregister(self.session)  # type: ignore[arg-type]
        self.feed.on_record(record("11-0", "10-0"))
        self.assertEqual(self.session.offered, [])
        self.assertEqual(self.feed.session_count, 0)

    def test_a_stopped_feed_reads_nothing(self) -> None:
        """After stopService, sweeps and gaps no longer read the history."""
        self.feed.catch_up()
        self.history.reads[0][1].errback(RuntimeError("boom"))
        self.feed.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

        self.feed.catch_up()
        self.assertEqual(len(self.history.reads), 1)
