"""Unit tests for :class:`wsha.market_session.MarketSubscriptions`: snapshots,
resumes, live ticks and conflation behind a paced connection."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.market_fakes import FakeFeed, FakeStreams, PacedLink, tick
from wsha import wire
from wsha.market import InstrumentStore
from wsha.market_session import MAX_QUEUED_FRAMES, MarketData, MarketSubscriptions
from wsha.output_gate import OutputGate, OutputLimits


class SlowStore:
    """An instrument store whose reads wait for the test to answer them."""

    def __init__(self) -> None:
        self.reads: list[tuple[str, Deferred[Any]]] = []

    def latest(self, instrument: str) -> Deferred[Any]:
        """Record the read; the test fires it."""
        d: Deferred[Any] = Deferred()
        self.reads.append((instrument, d))
        return d

    def tail(self, instrument: str, since: str, count: int) -> Deferred[Any]:
        """Record the read; the test fires it."""
        return self.latest(instrument)


class MarketSubscriptionsTests(SynchronousTestCase):
    """One connection's subscriptions on streams in memory and a fake feed."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.streams = FakeStreams()
        self.feed = FakeFeed()
        self.link = PacedLink(buffer_size=400)
        self.gate = OutputGate(self.link, self.clock, OutputLimits(10.0, 10_000), "a/p")
        self.gate.start()
        self.subs = self.connect(InstrumentStore(self.streams))

    def connect(self, store: Any) -> MarketSubscriptions:
        """Subscriptions over ``store`` that answer through the gate."""
        market = MarketData(store, self.feed, max_instruments=3, resume_cap=5)
        return market.subscriptions(
            self.gate, lambda frame: self.gate.send_frame(wire.encode(frame))
        )

    def subscribe(
        self, instrument: str, frame_id: str | None = None, after: str | None = None
    ) -> None:
        """Send a ``subscribe`` for ``instrument``."""
        self.subs.on_frame(
            wire.Subscribe(id=frame_id, instrument=instrument, after=after)
        )

    def unsubscribe(self, instrument: str, frame_id: str | None = None) -> None:
        """Send an ``unsubscribe`` for ``instrument``."""
        self.subs.on_frame(wire.Unsubscribe(id=frame_id, instrument=instrument))

    def live(self, instrument: str, *ids: str) -> None:
        """The feed hands over ticks ``ids`` of ``instrument``."""
        self.subs.on_ticks(instrument, [tick(instrument, i, i) for i in ids])

    def read(self) -> list[dict[str, Any]]:
        """What the client reads now (and the output resumes)."""
        return self.link.drain()

    def tick_ids(self) -> list[str]:
        """The ids of every tick read so far."""
        return [t["id"] for t in self.link.ticks()]

    # Snapshots and resumes

    def test_subscribe_answers_then_snapshot_then_watches_from_it(self) -> None:
        """subscribed, then the latest value marked snapshot; the feed is asked
        for what follows that id."""
        self.streams.add("EURUSD", {"bid": 1.0})
        latest = self.streams.add("EURUSD", {"bid": 1.1})
        self.subscribe("EURUSD", "s1")
        self.assertEqual(
            self.read(),
            [
                {"type": "subscribed", "instrument": "EURUSD", "id": "s1"},
                {
                    "type": "tick",
                    "instrument": "EURUSD",
                    "id": latest,
                    "snapshot": True,
                    "value": {"bid": 1.1},
                },
            ],
        )
        self.assertEqual(self.feed.calls, [("watch", "EURUSD", latest)])

    def test_subscribe_to_an_empty_instrument(self) -> None:
        """No entry yet: subscribed and no tick; watched from the start."""
        self.subscribe("EURUSD")
        self.assertEqual(self.read(), [{"type": "subscribed", "instrument": "EURUSD"}])
        self.assertEqual(self.feed.calls, [("watch", "EURUSD", "0-0")])

    def test_resume_sends_exactly_the_missed_ticks(self) -> None:
        """With ``after``, the ticks after it, in order, not snapshots; watched
        from the last of them."""
        ids = [self.streams.add("X", i) for i in range(5)]
        self.subscribe("X", after=ids[1])
        frames = self.read()
        self.assertEqual(frames[0]["type"], "subscribed")
        self.assertEqual([t["id"] for t in frames[1:]], ids[2:])
        self.assertEqual([t["snapshot"] for t in frames[1:]], [False] * 3)
        self.assertEqual([t["value"] for t in frames[1:]], [2, 3, 4])
        self.assertEqual(self.feed.calls, [("watch", "X", ids[-1])])

    def test_resume_with_nothing_missed(self) -> None:
        """After the latest id: no tick, watched from that id."""
        last = [self.streams.add("X", i) for i in range(3)][-1]
        self.subscribe("X", after=last)
        self.assertEqual([f["type"] for f in self.read()], ["subscribed"])
        self.assertEqual(self.feed.calls, [("watch", "X", last)])

    def test_resume_that_missed_too_much_gets_the_latest_conflated(self) -> None:
        """More missed than the resume cap: only the latest, snapshot and conflated."""
        ids = [self.streams.add("X", i) for i in range(10)]
        self.subscribe("X", after=ids[0])
        ticks = [f for f in self.read() if f["type"] == "tick"]
        self.assertEqual(
            [(t["id"], t["snapshot"], t.get("conflated")) for t in ticks],
            [(ids[-1], True, True)],
        )

    def test_resume_after_a_trimmed_id_gets_the_latest_conflated(self) -> None:
        """An id no longer in the stream: a gap may hide there, so the latest,
        conflated."""
        ids = [self.streams.add("X", i) for i in range(4)]
        self.streams.trim("X", 2)
        self.subscribe("X", after=ids[0])
        ticks = [f for f in self.read() if f["type"] == "tick"]
        self.assertEqual(
            [(t["id"], t.get("conflated")) for t in ticks], [(ids[-1], True)]
        )

    # Live ticks

    def test_live_ticks_follow_in_order_without_repeats(self) -> None:
        """Live ticks go out in order, snapshot false; an id at or below one
        already sent (a rewound feed) is dropped."""
        first = self.streams.add("X", 0)
        self.subscribe("X")
        self.live("X", "1-0")
        self.live("X", first, "2000-0", "2001-0")
        self.live("X", "2000-0", "2001-0", "2002-0")
        self.read()
        self.assertEqual(self.tick_ids(), [first, "2000-0", "2001-0", "2002-0"])
        self.assertEqual([t["snapshot"] for t in self.link.ticks()][1:], [False] * 3)

    def test_ticks_before_the_snapshot_is_read_are_not_sent(self) -> None:
        """Only an instrument whose snapshot went out takes live ticks."""
        slow = SlowStore()
        self.subs = self.connect(slow)
        self.subscribe("X")
        self.live("X", "5-0")
        slow.reads[0][1].callback(tick("X", "4-0"))
        self.live("X", "5-0")
        self.read()
        self.assertEqual(self.tick_ids(), ["4-0", "5-0"])

    def test_unsubscribe_stops_the_ticks(self) -> None:
        """unsubscribed is answered, the feed is told, and no tick follows."""
        self.subscribe("X")
        self.unsubscribe("X", "u1")
        self.live("X", "9-0")
        self.assertEqual(
            self.read()[-1], {"type": "unsubscribed", "instrument": "X", "id": "u1"}
        )
        self.assertEqual(self.tick_ids(), [])
        self.assertEqual(self.feed.watching, {})

    def test_unsubscribe_without_subscription(self) -> None:
        """Unsubscribing from what is not watched is not_subscribed."""
        self.unsubscribe("X", "u1")
        error = self.read()[0]
        self.assertEqual(
            (error["code"], error["id"], error["retry"]),
            ("not_subscribed", "u1", False),
        )

    def test_subscribing_again_changes_nothing(self) -> None:
        """A second subscribe is answered; no second snapshot or watch."""
        self.streams.add("X", 1)
        self.subscribe("X", "a")
        self.subscribe("X", "b")
        frames = self.read()
        self.assertEqual(
            [f["type"] for f in frames], ["subscribed", "tick", "subscribed"]
        )
        self.assertEqual(len(self.feed.calls), 1)

    def test_instrument_limit(self) -> None:
        """Past max_instruments: too_many_subscriptions; freed by an unsubscribe."""
        for name in ("A", "B", "C", "D"):
            self.subscribe(name, name)
        error = self.read()[-1]
        self.assertEqual((error["code"], error["id"]), ("too_many_subscriptions", "D"))
        self.unsubscribe("A")
        self.subscribe("D", "D2")
        self.assertEqual(self.read()[-1]["type"], "subscribed")
        self.assertEqual(sorted(self.subs.instruments), ["B", "C", "D"])

    def test_store_unavailable_is_a_retryable_error(self) -> None:
        """A store outage answers unavailable (retry true) and watches nothing."""
        self.streams.down = True
        self.subscribe("X", "s1")
        error = self.read()[0]
        self.assertEqual(
            (error["code"], error["retry"], error["id"]), ("unavailable", True, "s1")
        )
        self.assertEqual((self.feed.calls, self.subs.instruments), ([], []))
        self.streams.down = False
        self.subscribe("X", "s2")
        self.assertEqual(self.read()[0]["type"], "subscribed")

    def test_an_unexpected_store_failure_is_internal(self) -> None:
        """Any other failure is logged and answered internal."""
        slow = SlowStore()
        self.subs = self.connect(slow)
        self.subscribe("X", "s1")
        slow.reads[0][1].errback(ValueError("bad reply"))
        self.assertEqual(self.read()[0]["code"], "internal")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_frames_of_one_instrument_are_answered_in_order(self) -> None:
        """subscribe, unsubscribe, subscribe while the first read is out: the
        answers come in that order, and the watch ends as subscribed."""
        slow = SlowStore()
        self.subs = self.connect(slow)
        self.subscribe("X", "1")
        self.unsubscribe("X", "2")
        self.subscribe("X", "3")
        self.subscribe("Y", "4")
        slow.reads[1][1].callback(None)
        slow.reads[0][1].callback(tick("X", "4-0"))
        slow.reads[2][1].callback(tick("X", "5-0"))
        answers = [(f["type"], f.get("id")) for f in self.read()]
        self.assertEqual(
            answers,
            [
                ("subscribed", "4"),
                ("subscribed", "1"),
                ("tick", "4-0"),
                ("unsubscribed", "2"),
                ("subscribed", "3"),
                ("tick", "5-0"),
            ],
        )
        self.assertEqual(sorted(self.subs.instruments), ["X", "Y"])

    def test_too_many_frames_waiting_close_with_1013(self) -> None:
        """Frames pile up behind a read that does not return: past the bound,
        the connection is closed with 1013 rather than queueing without end."""
        slow = SlowStore()
        self.subs = self.connect(slow)
        for _ in range(MAX_QUEUED_FRAMES + 1):
            self.subscribe("X")
        self.assertEqual(self.link.closes, [])
        self.subscribe("X")
        self.assertEqual(self.link.closes[0][0], wire.CLOSE_TRY_LATER)

    def test_close_unwatches_everything(self) -> None:
        """A lost connection leaves the feed; a read still out is then ignored."""
        slow = SlowStore()
        self.subs = self.connect(slow)
        self.subscribe("X")
        slow.reads[0][1].callback(None)
        self.subscribe("Y")
        self.subs.close()
        slow.reads[1][1].callback(tick("Y", "1-0"))
        self.assertEqual(self.feed.watching, {})
        self.assertEqual(self.feed.calls[-1], ("unwatch", "X", None))
        self.assertEqual([f["type"] for f in self.read()], ["subscribed"])

    # Conflation

    def test_a_paused_connection_gets_the_latest_tick_conflated(self) -> None:
        """While the client does not read, only the latest tick is kept; once
        it reads, that tick arrives marked conflated; ids only grow; the
        connection's buffer stays bounded however many ticks come."""
        self.subscribe("X")
        ids = [f"{1000 + i}-0" for i in range(2000)]
        for entry_id in ids:
            self.live("X", entry_id)
            self.assertLess(self.link.buffered_bytes, 400 + 200)
        self.assertFalse(self.gate.writable)

        self.read()
        self.read()
        got = self.link.ticks()
        self.assertEqual(got[-1]["id"], ids[-1])
        self.assertTrue(got[-1]["conflated"])
        keys = [wire.stream_id_key(t["id"]) for t in got]
        self.assertEqual(keys, sorted(set(keys)))
        self.assertLess(len(got), 20)

    def test_conflation_is_per_instrument(self) -> None:
        """Each instrument keeps its own latest; all are written on resume, in
        the order they were first held back."""
        for name in ("A", "B"):
            self.subscribe(name)
        self.live("A", *[f"{i}-0" for i in range(1, 20)])
        self.assertFalse(self.gate.writable)
        self.live("B", "5-0")
        self.live("A", "20-0")
        self.live("B", "6-0")
        self.read()
        flushed = [
            (t["instrument"], t["id"], t.get("conflated", False)) for t in self.read()
        ]
        self.assertEqual(flushed, [("A", "20-0", True), ("B", "6-0", True)])

    def test_a_tick_held_back_alone_is_not_conflated(self) -> None:
        """A tick that waited but replaced none goes out unmarked."""
        self.subscribe("A")
        self.subscribe("B")
        self.live("A", *[f"{i}-0" for i in range(1, 20)])
        self.live("B", "7-0")
        self.read()
        b = [t for t in self.read() if t["instrument"] == "B"]
        self.assertEqual(
            [(t["id"], t["snapshot"], "conflated" in t) for t in b],
            [("7-0", False, False)],
        )

    def test_a_snapshot_replaced_before_it_was_sent_stays_a_snapshot(self) -> None:
        """If the snapshot itself was held back and then replaced, the client
        gets the latest as snapshot and conflated."""
        self.subscribe("A")
        self.live("A", *[f"{i}-0" for i in range(1, 20)])
        self.streams.add("B", 1)
        self.subscribe("B")
        self.live("B", "9999-0")
        self.read()
        b = [t for t in self.read() if t["instrument"] == "B"]
        self.assertEqual(
            [(t["id"], t["snapshot"], t.get("conflated")) for t in b],
            [("9999-0", True, True)],
        )

    def test_flush_stops_when_the_buffer_fills_again(self) -> None:
        """Held-back ticks that do not fit wait for the next resume."""
        names = [f"I{i}" for i in range(3)]
        for name in names:
            self.subscribe(name)
        self.link.buffer_size = 100
        for n in range(2, 5):
            for name in names:
                self.live(name, f"{n}-0")
        self.read()
        first = [t["instrument"] for t in self.read()]
        self.assertLess(len(first), 3)
        self.read()
        last = {t["instrument"]: t["id"] for t in self.link.ticks()}
        self.assertEqual(last, dict.fromkeys(names, "4-0"))

    def test_slow_client_is_closed_with_4008(self) -> None:
        """A client that stays behind for slow_client_timeout is closed, 4008."""
        self.subscribe("X")
        self.live("X", *[f"{i}-0" for i in range(1, 40)])
        self.clock.advance(10)
        self.assertEqual(self.link.closes, [(wire.CLOSE_TOO_SLOW, "client too slow")])

    def test_unsubscribe_drops_a_held_back_tick(self) -> None:
        """A held-back tick of an instrument unsubscribed meanwhile is not sent."""
        self.subscribe("A")
        self.subscribe("B")
        self.live("A", *[f"{i}-0" for i in range(1, 20)])
        self.live("B", "3-0")
        self.unsubscribe("B")
        self.read()
        self.read()
        self.assertNotIn("B", {t["instrument"] for t in self.link.ticks()})
