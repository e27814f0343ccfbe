"""Unit tests for :class:`wsha.services.market_feed.MarketFeed` on a fake link."""

from __future__ import annotations

import json
from typing import Any

import txredisapi
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.market_fakes import (
    FakeCommands,
    FakeFeedConnection,
    FakeTarget,
    RecordingWatcher,
)
from wsha import keys
from wsha.services.market_feed import MarketFeed, feed_link_settings
from wsha.services.redis_link import LinkSettings


def entries(*ids: str, value: Any = 1) -> list[list[Any]]:
    """Stream entries with ids ``ids``, each holding ``value``."""
    return [[entry_id, ["v", json.dumps(value)]] for entry_id in ids]


def reply(instrument: str, *ids: str) -> list[list[Any]]:
    """An XREAD reply with entries ``ids`` of one instrument."""
    return [[keys.instrument_ticks(instrument), entries(*ids)]]


class MarketFeedTests(SynchronousTestCase):
    """Reference-counted reads, fan-out in order, rewinds and reconnects."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.target = FakeTarget()
        self.commands = FakeCommands()
        self.feed = MarketFeed(
            self.target,
            self.clock,
            LinkSettings(6.0, 2.0),
            commands=self.commands,
            block_ms=1000,
            count=50,
        )
        self.feed.startService()
        self.connection = FakeFeedConnection(client_id=42)
        self.feed.link_up(self.connection)

    def watch(self, instrument: str, after: str = "0-0") -> RecordingWatcher:
        """A new watcher of ``instrument`` from ``after``, the wake-up run."""
        watcher = RecordingWatcher()
        self.feed.watch(instrument, watcher, after)
        self.clock.advance(0)
        return watcher

    def answer(self, value: Any) -> None:
        """Answer the pending XREAD with ``value``."""
        (_, d) = self.connection.pending()[-1]
        d.callback(value)

    def test_nothing_read_while_nothing_is_watched(self) -> None:
        """No XREAD is sent before an instrument has a watcher."""
        self.clock.advance(5)
        self.assertEqual(self.connection.reads, [])

    def test_watch_reads_from_the_given_id_with_block_and_count(self) -> None:
        """A watched instrument is read with XREAD BLOCK/COUNT from its start id."""
        self.watch("EURUSD", "5-0")
        key = keys.instrument_ticks("EURUSD")
        self.assertEqual(
            self.connection.reads[0][0],
            ("XREAD", "BLOCK", 1000, "COUNT", 50, "STREAMS", key, "5-0"),
        )

    def test_ticks_fan_out_in_order_and_the_position_moves(self) -> None:
        """Each watcher of an instrument gets its ticks in order; the next read
        starts after the last id; watchers of other instruments get none."""
        a, b = self.watch("EURUSD"), self.watch("EURUSD")
        other = self.watch("GBPUSD")
        self.assertEqual(len(self.connection.pending()), 1)
        self.answer(reply("EURUSD", "1-0", "2-0", "3-0"))

        expected = [("EURUSD", i) for i in ("1-0", "2-0", "3-0")]
        self.assertEqual((a.got, b.got, other.got), (expected, expected, []))
        self.assertEqual(
            self.connection.streams_of(-1), {"EURUSD": "3-0", "GBPUSD": "0-0"}
        )

    def test_timeout_reply_reads_again(self) -> None:
        """A block that ends with nothing (nil) is followed by the same read."""
        self.watch("EURUSD", "4-0")
        self.answer(None)
        self.assertEqual(len(self.connection.reads), 2)
        self.assertEqual(self.connection.streams_of(-1), {"EURUSD": "4-0"})

    def test_instrument_is_read_while_it_has_a_watcher(self) -> None:
        """Reference counting: the instrument leaves the read with its last
        watcher, and with no instrument left no read is sent at all."""
        a, b = self.watch("EURUSD"), self.watch("EURUSD")
        self.feed.unwatch("EURUSD", a)
        self.answer(None)
        self.assertEqual(self.connection.streams_of(-1), {"EURUSD": "0-0"})
        self.assertEqual(self.feed.watcher_count("EURUSD"), 1)

        self.feed.unwatch("EURUSD", b)
        self.answer(reply("EURUSD", "1-0"))
        self.assertEqual(b.got, [])
        self.assertEqual(self.connection.pending(), [])
        self.assertEqual(self.feed.watched(), {})

    def test_a_new_instrument_unblocks_the_read_in_flight(self) -> None:
        """Watching a new instrument cuts the blocked read short (CLIENT UNBLOCK
        on the command connection, once per reactor turn); the next read has both."""
        self.watch("EURUSD")
        first = RecordingWatcher()
        self.feed.watch("GBPUSD", first, "9-0")
        self.feed.watch("USDJPY", first, "0-0")
        self.clock.advance(0)
        self.assertEqual(self.commands.commands, [("CLIENT", "UNBLOCK", 42)])

        self.answer(None)
        self.assertEqual(
            self.connection.streams_of(-1),
            {"EURUSD": "0-0", "GBPUSD": "9-0", "USDJPY": "0-0"},
        )

    def test_joining_behind_the_feed_rewinds_it(self) -> None:
        """A watcher joining at an id the feed has read past makes the feed read
        again from there; the reply in flight is not used for that instrument."""
        early = self.watch("EURUSD")
        self.answer(reply("EURUSD", "1-0", "2-0", "3-0"))
        late = self.watch("EURUSD", "1-0")
        self.assertEqual(self.commands.commands, [("CLIENT", "UNBLOCK", 42)])

        self.answer(reply("EURUSD", "4-0"))
        self.assertEqual(late.got, [])
        self.assertEqual(self.connection.streams_of(-1), {"EURUSD": "1-0"})

        self.answer(reply("EURUSD", "2-0", "3-0", "4-0"))
        self.assertEqual([i for _, i in late.got], ["2-0", "3-0", "4-0"])
        # The early watcher is given 2-0 and 3-0 again; it drops them by id.
        self.assertEqual(
            [i for _, i in early.got], ["1-0", "2-0", "3-0", "2-0", "3-0", "4-0"]
        )

    def test_joining_ahead_of_the_feed_changes_nothing(self) -> None:
        """A watcher joining at a later id than the feed's position is served
        from the same read (it drops what it already has)."""
        self.watch("EURUSD", "1-0")
        self.watch("EURUSD", "8-0")
        self.assertEqual(self.commands.commands, [])
        self.assertEqual(self.connection.streams_of(-1), {"EURUSD": "1-0"})

    def test_reconnect_carries_on_from_the_last_ids(self) -> None:
        """A lost connection fails the read quietly; once a new one is up the
        feed reads on from the last ids it saw."""
        watcher = self.watch("EURUSD")
        self.answer(reply("EURUSD", "1-0", "2-0"))
        self.feed.link_down(self.connection)
        self.connection.pending()[-1][1].errback(txredisapi.ConnectionError("lost"))
        self.clock.advance(5)

        again = FakeFeedConnection()
        self.feed.link_up(again)
        self.assertEqual(again.streams_of(-1), {"EURUSD": "2-0"})
        again.reads[-1][1].callback(reply("EURUSD", "3-0"))
        self.assertEqual([i for _, i in watcher.got], ["1-0", "2-0", "3-0"])

    def test_a_failed_read_is_retried_after_a_delay(self) -> None:
        """An error reply (not a lost connection) is logged and retried later."""
        self.watch("EURUSD")
        self.connection.pending()[-1][1].errback(
            txredisapi.ResponseError("WRONGTYPE Operation against a key")
        )
        self.assertEqual(self.connection.pending(), [])
        self.clock.advance(1.0)
        self.assertEqual(len(self.connection.pending()), 1)

    def test_malformed_entries_are_skipped_but_passed(self) -> None:
        """A malformed entry reaches no watcher, and is not read again."""
        watcher = self.watch("EURUSD")
        bad = [keys.instrument_ticks("EURUSD"), [["1-0", ["x", "1"]], *entries("2-0")]]
        self.answer([bad])
        self.assertEqual(watcher.got, [("EURUSD", "2-0")])
        self.assertEqual(self.connection.streams_of(-1), {"EURUSD": "2-0"})

    def test_a_failing_watcher_does_not_stop_the_others(self) -> None:
        """A watcher that raises is logged; the others and the loop go on."""

        class Broken:
            def on_ticks(self, instrument: str, ticks: Any) -> None:
                raise RuntimeError("broken watcher")

        self.feed.watch("EURUSD", Broken(), "0-0")
        fine = self.watch("EURUSD")
        self.answer(reply("EURUSD", "1-0"))
        self.assertEqual(fine.got, [("EURUSD", "1-0")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(self.connection.pending()), 1)

    def test_stop_closes_the_link(self) -> None:
        """stopService disconnects the feed's own connection and reads no more."""
        self.watch("EURUSD")
        self.successResultOf(self.feed.stopService())
        self.assertTrue(self.target.handler.disconnected)
        self.connection.pending()[-1][1].errback(txredisapi.ConnectionError("closed"))
        self.clock.advance(5)
        self.assertEqual(len(self.connection.reads), 1)

    def test_link_reply_timeout_outlasts_the_block(self) -> None:
        """The feed's link waits longer for a reply than a read blocks."""
        settings = feed_link_settings(0.5, 2.0)
        self.assertGreater(settings.timeout, 1.0)
        self.assertEqual(self.target.opened[0][0], self.feed)
