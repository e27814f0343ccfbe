"""Unit tests for :mod:`wsha.market`: ticks, their frames and the instrument store."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from tests.unit.market_fakes import FakeStreams, tick
from wsha import keys
from wsha.market import InstrumentStore, Tick, is_json_value, parse_entry


class TickTests(SynchronousTestCase):
    """A tick's frames carry its value as stored, with the flags asked for."""

    def test_live_frame(self) -> None:
        """The plain live frame: snapshot false, no conflated field."""
        frame = json.loads(tick("EURUSD", "5-1", {"bid": 1.1}).live_frame)
        self.assertEqual(
            frame,
            {
                "type": "tick",
                "instrument": "EURUSD",
                "id": "5-1",
                "snapshot": False,
                "value": {"bid": 1.1},
            },
        )

    def test_flags(self) -> None:
        """snapshot and conflated are written as asked; conflated only when true."""
        t = tick("EURUSD", "5-1")
        self.assertIs(t.frame(False, False), t.live_frame)
        snap = json.loads(t.frame(True, False))
        self.assertEqual((snap["snapshot"], "conflated" in snap), (True, False))
        both = json.loads(t.frame(True, True))
        self.assertEqual((both["snapshot"], both["conflated"]), (True, True))

    def test_value_is_spliced_as_stored(self) -> None:
        """The value's JSON text goes out byte for byte, not re-encoded."""
        t = Tick("X", "1-0", '{"b": 1.10,  "a": [1]}')
        self.assertIn(b'"value":{"b": 1.10,  "a": [1]}}', t.live_frame)

    def test_ids_order_as_pairs_of_integers(self) -> None:
        """key orders 10-0 after 9-5, unlike the strings."""
        self.assertGreater(tick("X", "10-0").key, tick("X", "9-5").key)


class ParseTests(SynchronousTestCase):
    """Entries not written by a well-behaved producer are skipped."""

    def test_well_formed(self) -> None:
        """An entry with a JSON ``v`` (other fields ignored) is a tick."""
        parsed = parse_entry("X", ["1-0", ["src", "feed", "v", "[1,2]"]], 100)
        self.assertEqual(parsed, Tick("X", "1-0", "[1,2]"))

    def test_malformed(self) -> None:
        """No ``v``, non-JSON, NaN, non-UTF-8 or oversize values are skipped."""
        for fields in (
            ["x", "1"],
            ["v", "{oops"],
            ["v", "NaN"],
            ["v", b"\xff"],
            ["v", json.dumps("x" * 200)],
            [],
        ):
            self.assertIsNone(parse_entry("X", ["1-0", fields], 100), fields)

    def test_strict_json(self) -> None:
        """Infinity is not JSON; numbers, strings and null are."""
        self.assertFalse(is_json_value("-Infinity"))
        for text in ("1", '"a"', "null", '{"a":[true]}'):
            self.assertTrue(is_json_value(text))


class InstrumentStoreTests(SynchronousTestCase):
    """publish, latest and tail against streams that follow Redis's rules."""

    def setUp(self) -> None:
        self.redis = FakeStreams()
        self.store = InstrumentStore(self.redis, max_length=50, max_value_bytes=1000)

    def test_publish_appends_with_approximate_trim(self) -> None:
        """publish is one XADD with MAXLEN ~ <max length> and the value in ``v``."""
        entry_id = self.successResultOf(self.store.publish("fx/EURUSD", '{"bid":1}'))
        self.assertEqual(
            self.redis.commands[-1],
            (
                "XADD",
                keys.instrument_ticks("fx/EURUSD"),
                "MAXLEN",
                "~",
                50,
                "*",
                "v",
                '{"bid":1}',
            ),
        )
        self.assertEqual(self.redis.ids("fx/EURUSD"), [entry_id])

    def test_instrument_key_has_its_own_hash_tag(self) -> None:
        """The stream key is tagged by instrument, apart from users and nodes."""
        self.assertEqual(keys.instrument_ticks("EURUSD"), "wsha:{i:EURUSD}:ticks")

    def test_latest(self) -> None:
        """latest is the newest tick; None for an empty or unknown instrument."""
        self.assertIsNone(self.successResultOf(self.store.latest("X")))
        self.redis.add("X", 1)
        newest = self.redis.add("X", 2)
        self.assertEqual(
            self.successResultOf(self.store.latest("X")), Tick("X", newest, "2")
        )

    def test_latest_skips_a_malformed_newest_entry(self) -> None:
        """A malformed newest entry gives way to the good one before it."""
        good = self.redis.add("X", 1)
        self.redis.add("X", None, price="3")
        self.assertEqual(self.successResultOf(self.store.latest("X")).id, good)

    def test_tail_after_a_retained_id_is_contiguous(self) -> None:
        """Everything after a retained id, in order, and contiguous."""
        ids = [self.redis.add("X", i) for i in range(5)]
        ticks, contiguous = self.successResultOf(self.store.tail("X", ids[1], 10))
        self.assertEqual([t.id for t in ticks], ids[2:])
        self.assertTrue(contiguous)

    def test_tail_of_the_latest_id_is_empty_and_contiguous(self) -> None:
        """Nothing missed after the newest id."""
        last = [self.redis.add("X", i) for i in range(3)][-1]
        self.assertEqual(
            self.successResultOf(self.store.tail("X", last, 10)), ([], True)
        )

    def test_tail_over_the_cap_is_not_contiguous(self) -> None:
        """More than ``count`` missed: the newest ``count``, not contiguous."""
        ids = [self.redis.add("X", i) for i in range(8)]
        ticks, contiguous = self.successResultOf(self.store.tail("X", ids[0], 3))
        self.assertEqual([t.id for t in ticks], ids[-3:])
        self.assertFalse(contiguous)

    def test_tail_after_exactly_count_is_contiguous(self) -> None:
        """Exactly ``count`` missed still fits."""
        ids = [self.redis.add("X", i) for i in range(4)]
        ticks, contiguous = self.successResultOf(self.store.tail("X", ids[0], 3))
        self.assertEqual(([t.id for t in ticks], contiguous), (ids[1:], True))

    def test_tail_after_a_trimmed_id_is_not_contiguous(self) -> None:
        """An id trimmed away: what is left may not follow it directly."""
        ids = [self.redis.add("X", i) for i in range(6)]
        self.redis.trim("X", 2)
        ticks, contiguous = self.successResultOf(self.store.tail("X", ids[1], 10))
        self.assertEqual(([t.id for t in ticks], contiguous), (ids[-2:], False))

    def test_tail_compares_ids_as_numbers(self) -> None:
        """``0001001-0`` names the entry ``1001-0``."""
        first = self.redis.add("X", 0)
        later = self.redis.add("X", 1)
        ms = first.split("-")[0]
        ticks, contiguous = self.successResultOf(self.store.tail("X", f"000{ms}-0", 10))
        self.assertEqual(([t.id for t in ticks], contiguous), ([later], True))
