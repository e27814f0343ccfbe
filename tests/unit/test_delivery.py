"""Unit tests for :class:`wsha.delivery.SessionDelivery`, driven by a fake inbox."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.fakes import FakeInbox, make_entry
from wsha.delivery import SessionDelivery
from wsha.inbox import InboxEntry


class SessionDeliveryTests(SynchronousTestCase):
    """One pull at a time, strictly after the last id sent."""

    def setUp(self) -> None:
        self.inbox = FakeInbox()
        self.clock = Clock()
        self.batches: list[list[str]] = []
        self.delivery = SessionDelivery(
            self.inbox,
            "alice",
            "0-0",
            self.deliver,
            self.clock,
            batch_size=2,
            retry_delay=3.0,
        )

    def deliver(self, entries: list[InboxEntry]) -> None:
        """Record the ids of one delivered batch."""
        self.batches.append([entry.id for entry in entries])

    def answer(self, *ids: str) -> None:
        """Fire the most recent read with entries ``ids``."""
        self.inbox.reads[-1][1].callback([make_entry(i) for i in ids])

    def delivered(self) -> list[str]:
        """Every id delivered so far, in order."""
        return [entry_id for batch in self.batches for entry_id in batch]

    def test_full_batches_keep_pulling_after_the_last_id(self) -> None:
        """A full batch is followed at once by a read after its last id."""
        self.delivery.poke()
        self.assertEqual(self.inbox.reads[0][0], ("alice", "0-0", 2))
        self.answer("1-0", "2-0")
        self.assertEqual(self.inbox.reads[1][0], ("alice", "2-0", 2))
        self.answer("3-0")

        self.assertEqual(self.batches, [["1-0", "2-0"], ["3-0"]])
        self.assertEqual(self.delivery.last_sent, "3-0")
        self.assertEqual(len(self.inbox.reads), 2)

    def test_poke_during_pull_causes_exactly_one_more_pull(self) -> None:
        """Pokes while a read is in flight coalesce into a single further read."""
        self.delivery.poke()
        self.delivery.poke()
        self.delivery.poke()
        self.assertEqual(len(self.inbox.reads), 1)

        self.answer("1-0")
        self.assertEqual(len(self.inbox.reads), 2)
        self.assertEqual(self.inbox.reads[1][0][1], "1-0")
        self.answer()

        self.assertEqual(len(self.inbox.reads), 2)
        self.assertEqual(self.delivered(), ["1-0"])

    def test_empty_read_delivers_nothing(self) -> None:
        """An empty read calls no deliver and leaves the cursor alone."""
        self.delivery.poke()
        self.answer()
        self.assertEqual(self.batches, [])
        self.assertEqual(self.delivery.last_sent, "0-0")

    def test_stop_discards_the_read_in_flight(self) -> None:
        """After stop(), an answer in flight is not delivered and pokes do nothing."""
        self.delivery.poke()
        self.delivery.stop()
        self.answer("1-0")
        self.delivery.poke()

        self.assertEqual(self.batches, [])
        self.assertEqual(len(self.inbox.reads), 1)

    def test_failed_read_retries_after_delay(self) -> None:
        """A failed read is retried retry_delay seconds later, from the same id."""
        self.delivery.poke()
        self.answer("1-0")
        self.delivery.poke()
        self.inbox.reads[-1][1].errback(ConnectionError("redis down"))
        self.assertEqual(len(self.inbox.reads), 2)

        self.clock.advance(2.9)
        self.assertEqual(len(self.inbox.reads), 2)
        self.clock.advance(0.1)
        self.assertEqual(self.inbox.reads[2][0][1], "1-0")
        self.answer("2-0")

        self.assertEqual(self.delivered(), ["1-0", "2-0"])

    def test_stop_cancels_a_pending_retry(self) -> None:
        """stop() cancels the retry of a failed read; nothing is read again."""
        self.delivery.poke()
        self.inbox.reads[-1][1].errback(ConnectionError("redis down"))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

        self.delivery.stop()
        self.clock.advance(10)

        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.inbox.reads), 1)

    def test_failing_deliver_does_not_deliver_twice(self) -> None:
        """If deliver raises, the retry reads after that batch, never resending it."""
        calls: list[list[str]] = []

        def deliver(entries: list[InboxEntry]) -> None:
            calls.append([entry.id for entry in entries])
            if len(calls) == 1:
                raise RuntimeError("link broke")

        delivery = SessionDelivery(self.inbox, "bob", "5-0", deliver, self.clock)
        delivery.poke()
        self.answer("6-0")
        self.clock.advance(1.0)
        self.assertEqual(self.inbox.reads[-1][0], ("bob", "6-0", 256))
        self.answer("7-0")

        self.assertEqual(calls, [["6-0"], ["7-0"]])

    def test_never_delivers_an_entry_twice_across_pokes(self) -> None:
        """Interleaved pokes and answers deliver each id once, in order."""
        for ids in (("1-0", "2-0"), ("3-0",), (), ("4-0",), ()):
            self.delivery.poke()
            self.answer(*ids)
        self.answer()

        self.assertEqual(self.delivered(), ["1-0", "2-0", "3-0", "4-0"])
        afters = [read[0][1] for read in self.inbox.reads]
        self.assertEqual(afters, sorted(afters))


class OfferTests(SynchronousTestCase):
    """Live entries go out at once only when they are the next one needed."""

    def setUp(self) -> None:
        self.inbox = FakeInbox()
        self.sent: list[str] = []
        self.delivery = SessionDelivery(
            self.inbox,
            "room",
            "5-0",
            lambda entries: self.sent.extend(e.id for e in entries),
            Clock(),
        )

    def test_next_entry_is_sent_without_a_read(self) -> None:
        """An entry whose predecessor was the last one sent goes out directly."""
        self.delivery.offer(make_entry("6-0"), "5-0")
        self.delivery.offer(make_entry("7-0"), "6-0")
        self.assertEqual(self.sent, ["6-0", "7-0"])
        self.assertEqual(self.inbox.reads, [])

    def test_a_gap_reads_the_stream_instead(self) -> None:
        """An entry after one never sent makes the session read after its last id."""
        self.delivery.offer(make_entry("8-0"), "7-0")
        self.assertEqual(self.sent, [])
        self.assertEqual(self.inbox.reads[-1][0], ("room", "5-0", 256))
        self.inbox.reads[-1][1].callback([make_entry("7-0"), make_entry("8-0")])
        self.assertEqual(self.sent, ["7-0", "8-0"])

    def test_old_and_repeated_entries_are_dropped(self) -> None:
        """An entry at or below the last id sent is never sent again."""
        self.delivery.offer(make_entry("5-0"), "4-0")
        self.delivery.offer(make_entry("6-0"), "5-0")
        self.delivery.offer(make_entry("6-0"), "5-0")
        self.assertEqual(self.sent, ["6-0"])

    def test_entries_during_a_read_wait_for_it(self) -> None:
        """While a read runs, a live entry only asks for another read, so the
        two never interleave out of order."""
        self.delivery.poke()
        self.delivery.offer(make_entry("6-0"), "5-0")
        self.assertEqual(self.sent, [])
        self.inbox.reads[-1][1].callback([make_entry("6-0")])
        self.inbox.reads[-1][1].callback([])
        self.assertEqual(self.sent, ["6-0"])
        self.delivery.stop()
        self.delivery.offer(make_entry("7-0"), "6-0")
        self.assertEqual(self.sent, ["6-0"])
