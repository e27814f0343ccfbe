"""Unit tests for a ClientSession's market data and output flow control: its
frames reach the market data side, and a connection that backs up stops
pulling its inbox and is closed with 4008 if it stays behind."""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.unit.fakes import GatewayHarness, make_claim, make_entry
from tests.unit.market_fakes import FakeFeed, FakeStreams, PacedLink
from wsha import wire
from wsha.client_session import ClientSession
from wsha.market import InstrumentStore
from wsha.market_session import MarketData
from wsha.output_gate import OutputLimits


class ClientSessionOutputTests(SynchronousTestCase):
    """A session on a faked gateway, behind a connection that pauses."""

    def setUp(self) -> None:
        self.harness = GatewayHarness()
        self.streams = FakeStreams()
        self.feed = FakeFeed()
        gateway = self.harness.gateway
        gateway.market = MarketData(InstrumentStore(self.streams), self.feed)
        gateway.output_limits = OutputLimits(5.0, 100_000)
        self.link = PacedLink(buffer_size=2000)
        self.client = ClientSession(gateway, self.link, "alice", "phone", None)
        self.client.start()
        self.harness.registry.claims[-1][1].callback(make_claim(3))

    def frames(self) -> list[dict[str, Any]]:
        """Everything the client has read so far, after reading what is buffered."""
        self.link.drain()
        return self.link.read

    def answer_inbox(self, *ids: str, size: int = 10) -> None:
        """Answer the newest inbox read with entries ``ids`` of ``size`` bytes."""
        reads = self.harness.inbox.reads
        reads[-1][1].callback([make_entry(i, "x" * size) for i in ids])

    def test_output_gate_is_registered_on_start(self) -> None:
        """The session's gate is the transport's producer from the start."""
        self.assertIs(self.link.producer, self.client.output)

    def test_instrument_frames_reach_market_data(self) -> None:
        """subscribe/unsubscribe with an instrument are served here."""
        self.streams.add("EURUSD", {"bid": 1})
        self.client.on_text('{"type":"subscribe","id":"s","instrument":"EURUSD"}')
        self.client.on_text('{"type":"unsubscribe","id":"u","instrument":"EURUSD"}')
        kinds = [f["type"] for f in self.frames()]
        self.assertEqual(kinds, ["welcome", "subscribed", "tick", "unsubscribed"])
        self.assertEqual(self.feed.watching, {})

    def test_group_frames_are_left_to_their_part(self) -> None:
        """A group subscribe is not taken for market data."""
        self.client.on_text('{"type":"subscribe","id":"g","group":"room"}')
        self.assertEqual(self.frames()[-1]["code"], "unknown_type")

    def test_inbox_delivery_waits_while_the_output_is_backed_up(self) -> None:
        """A backed-up connection is written no more messages and its inbox is
        not read; once it drains, delivery goes on from the first unwritten
        message, in order and without a repeat."""
        self.answer_inbox("1-0", "2-0", "3-0", "4-0", size=800)
        self.assertFalse(self.client.output.writable)
        written = [json.loads(f)["id"] for f in self.link.buffered[1:]]
        self.assertEqual(written, ["1-0", "2-0", "3-0"])

        reads = len(self.harness.inbox.reads)
        self.client.delivery.poke()  # type: ignore[union-attr]
        self.assertEqual(len(self.harness.inbox.reads), reads)

        self.link.drain()
        (user, after, _), _ = self.harness.inbox.reads[-1]
        self.assertEqual((user, after), ("alice", "3-0"))
        self.answer_inbox("4-0", "5-0")
        ids = [f["id"] for f in self.frames() if f["type"] == "message"]
        self.assertEqual(ids, ["1-0", "2-0", "3-0", "4-0", "5-0"])

    def test_a_pause_that_held_back_no_message_reads_nothing_more(self) -> None:
        """A connection backed up by other traffic (market data, say) and
        drained again costs no inbox read when delivery had nothing held."""
        self.answer_inbox()
        reads = len(self.harness.inbox.reads)
        self.link.send_frame(b'{"pad":"' + b"x" * 3000 + b'"}')
        self.assertFalse(self.client.output.writable)
        self.link.drain()
        self.assertEqual(len(self.harness.inbox.reads), reads)

    def test_a_connection_that_stays_backed_up_is_closed_with_4008(self) -> None:
        """Past slow_client_timeout behind, the session's link is closed, 4008."""
        self.answer_inbox("1-0", "2-0", "3-0", size=800)
        self.harness.clock.advance(5)
        self.assertEqual(self.link.closes, [(wire.CLOSE_TOO_SLOW, "client too slow")])

    def test_replies_still_go_out_while_backed_up_but_are_capped(self) -> None:
        """Answers are written while paused, counted, and past the byte cap
        the connection is closed with 4008 at once."""
        self.answer_inbox("1-0", "2-0", "3-0", size=800)
        for _ in range(5000):
            self.client.on_text('{"type":"ping","id":"p"}')
        self.assertEqual(self.link.closes, [(wire.CLOSE_TOO_SLOW, "client too slow")])
        self.assertLess(self.link.buffered_bytes, 105_000)

    def test_connection_lost_stops_everything(self) -> None:
        """After the connection is lost: no watches, no timers."""
        self.client.on_text('{"type":"subscribe","instrument":"EURUSD"}')
        self.answer_inbox("1-0", "2-0", "3-0", size=800)
        self.client.connection_lost()
        self.assertEqual(self.feed.watching, {})
        self.assertEqual(self.harness.clock.getDelayedCalls(), [])
