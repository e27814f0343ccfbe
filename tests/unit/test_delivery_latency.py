"""Unit tests for the delivery-to-ack timing of :mod:`wsha.delivery_latency`.

The ledger alone on a Clock, then its use by a connection's inbox, groups and
broadcasts on the faked gateway.
"""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.fakes import GatewayHarness, appended
from tests.unit.group_fakes import GroupHarness
from tests.unit.metric_values import Delta
from wsha.delivery_latency import DeliveryLedger, accepted_at
from wsha.inbox import InboxEntry

ACK = "wsha_delivery_ack_seconds_count"
ACK_SUM = "wsha_delivery_ack_seconds_sum"
WRITE = "wsha_delivery_write_seconds_count"
UNTRACKED = "wsha_delivery_untracked_total"
OUT = "wsha_messages_out_total"


def entry(entry_id: str, ts_ms: int, body: object = None) -> InboxEntry:
    """An inbox entry accepted at ``ts_ms``."""
    return InboxEntry(entry_id, "bob", json.dumps(body), ts_ms, f"c-{entry_id}")


class LedgerTests(SynchronousTestCase):
    """What one connection remembers between a write and the client's ack."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000.0)
        self.ledger = DeliveryLedger(self.clock, max_tracked=3)

    def test_ack_times_every_message_up_to_it_from_acceptance(self) -> None:
        """Two messages accepted at 1000.0 s and 1000.5 s, acked together at
        1002.0 s, are timed at 2.0 s and 1.5 s; the third waits for its ack."""
        count = Delta(ACK, **{"class": "direct", "when": "live"})
        total = Delta(ACK_SUM, **{"class": "direct", "when": "live"})
        self.ledger.written("direct", "", "1000000-0", 1_000_000, "local")
        self.ledger.written("direct", "", "1000500-0", 1_000_500, "local")
        self.ledger.written("direct", "", "1001000-0", 1_001_000, "kafka")
        self.clock.advance(2.0)

        self.assertEqual(self.ledger.acknowledged("direct", "", "1000500-0"), 2)

        self.assertEqual(count(), 2)
        self.assertAlmostEqual(total(), 3.5)
        self.assertEqual(self.ledger.pending("direct"), 1)

    def test_write_is_timed_and_counted_by_route(self) -> None:
        """Each write is timed from acceptance and counted by class and route."""
        writes = Delta(WRITE, **{"class": "group", "when": "live"})
        routed = Delta(OUT, **{"class": "group", "route": "pubsub"})
        self.ledger.written("group", "room", "1000000-0", 1_000_000, "pubsub")
        self.assertEqual((writes(), routed()), (1, 1))

    def test_messages_accepted_before_the_connection_are_backlog(self) -> None:
        """A message accepted before the connection opened is timed as backlog."""
        backlog = Delta(ACK, **{"class": "direct", "when": "backlog"})
        self.ledger.written("direct", "", "999000-0", 999_000, "replay")
        self.ledger.acknowledged("direct", "", "999000-0")
        self.assertEqual(backlog(), 1)

    def test_record_is_bounded_and_overflow_counted(self) -> None:
        """Past ``max_tracked`` unacked messages the oldest is dropped and
        counted, never timed."""
        overflow = Delta(UNTRACKED, **{"class": "direct", "reason": "overflow"})
        acked = Delta(ACK, **{"class": "direct", "when": "live"})
        for i in range(5):
            self.ledger.written("direct", "", f"100000{i}-0", 1_000_000 + i, "local")
        self.assertEqual(self.ledger.pending("direct"), 3)
        self.assertEqual(overflow(), 2)
        self.ledger.acknowledged("direct", "", "1000004-0")
        self.assertEqual(acked(), 3)

    def test_bound_covers_all_streams(self) -> None:
        """Many groups share one bound: a new group's first message drops the
        oldest message of another stream."""
        overflow = Delta(UNTRACKED, **{"class": "group", "reason": "overflow"})
        for group in "abcd":
            self.ledger.written("group", group, "1000000-0", 1_000_000, "history")
        self.assertEqual(self.ledger.tracked, 3)
        self.assertEqual(
            [self.ledger.pending("group", g) for g in "abcd"], [0, 1, 1, 1]
        )
        self.assertEqual(overflow(), 1)

    def test_streams_are_separate(self) -> None:
        """An ack of one group covers nothing of another group or the inbox."""
        self.ledger.written("group", "a", "1000000-0", 1_000_000, "history")
        self.ledger.written("group", "b", "1000000-0", 1_000_000, "history")
        self.ledger.written("direct", "", "1000000-0", 1_000_000, "local")
        self.assertEqual(self.ledger.acknowledged("group", "a", "1000000-0"), 1)
        self.assertEqual(self.ledger.pending("group", "b"), 1)
        self.assertEqual(self.ledger.pending("direct"), 1)

    def test_ack_of_nothing_sent_here_times_nothing(self) -> None:
        """An ack for ids sent on an earlier connection, or acked twice, is a no-op."""
        self.assertEqual(self.ledger.acknowledged("direct", "", "5-0"), 0)
        self.ledger.written("direct", "", "1000000-0", 1_000_000, "local")
        self.ledger.acknowledged("direct", "", "1000000-0")
        self.assertEqual(self.ledger.acknowledged("direct", "", "1000000-0"), 0)

    def test_close_counts_what_was_never_acked(self) -> None:
        """When the connection ends, its unacked messages are counted as closed."""
        closed = Delta(UNTRACKED, **{"class": "broadcast", "reason": "closed"})
        self.ledger.written("broadcast", "", "1000000-0", 1_000_000, "kafka")
        self.ledger.written("broadcast", "", "1000001-0", 1_000_001, "kafka")
        self.ledger.close()
        self.assertEqual(closed(), 2)
        self.assertEqual(self.ledger.pending("broadcast"), 0)

    def test_market_ticks_are_not_kept_for_acks(self) -> None:
        """Classes that are never acknowledged are timed on write only."""
        self.ledger.written("market", "EURUSD", "1000000-0", 0, "live")
        self.assertEqual(self.ledger.pending("market", "EURUSD"), 0)

    def test_acceptance_falls_back_on_the_stream_id(self) -> None:
        """Without a ``ts`` the stream id's milliseconds date the acceptance."""
        self.assertEqual(accepted_at("1700000000123-4", 0), 1_700_000_000.123)
        self.assertEqual(accepted_at("1-0", 2500), 2.5)


class ConnectionTimingTests(SynchronousTestCase):
    """A connection notes what it writes and times it at the client's acks."""

    def test_inbox_ack_times_the_delivered_messages(self) -> None:
        """Two inbox messages delivered and then acked by the client are timed
        from their acceptance to that ack; an ack beyond what was sent is
        refused and times nothing."""
        harness = GatewayHarness()
        client, _ = harness.online(3)
        now_ms = int(harness.clock.seconds() * 1000)
        read = harness.inbox.reads[0][1]
        acked = Delta(ACK, **{"class": "direct", "when": "live"})
        replayed = Delta(OUT, **{"class": "direct", "route": "replay"})
        read.callback([entry(f"{now_ms}-0", now_ms), entry(f"{now_ms}-1", now_ms)])
        self.assertEqual(replayed(), 2)
        harness.clock.advance(0.25)

        client.on_text(json.dumps({"type": "ack", "upto": f"{now_ms + 1}-0"}))
        self.assertEqual(acked(), 0)
        client.on_text(json.dumps({"type": "ack", "upto": f"{now_ms}-1"}))

        self.assertEqual(acked(), 2)
        self.assertEqual(harness.registry.acks[-1][3], f"{now_ms}-1")

    def test_notice_route_names_the_pull(self) -> None:
        """A pull caused by a Kafka notice delivers on route ``kafka``."""
        harness = GatewayHarness()
        harness.online(3)
        harness.inbox.reads[0][1].callback([])
        routed = Delta(OUT, **{"class": "direct", "route": "kafka"})
        harness.gateway.on_notice(b'{"kind":"inbox","user":"alice"}')
        harness.inbox.reads[1][1].callback([entry("1700000000001-0", 1)])
        self.assertEqual(routed(), 1)

    def test_stored_sends_are_counted_and_duplicates_apart(self) -> None:
        """A send stored once counts as a message in; its retry as a duplicate."""
        harness = GatewayHarness()
        client, _ = harness.online(3)
        stored = Delta(
            "wsha_messages_in_total", **{"class": "direct", "route": "websocket"}
        )
        dupes = Delta(
            "wsha_duplicates_suppressed_total",
            **{"class": "direct", "route": "websocket"},
        )
        for _ in range(2):
            client.on_text(
                json.dumps({"type": "send", "id": "c1", "to": "bob", "body": 1})
            )
        harness.inbox.appends[0][1].callback(appended("1-0"))
        harness.inbox.appends[1][1].callback(appended("1-0", duplicate=True))
        self.assertEqual((stored(), dupes()), (1, 1))

    def test_group_ack_times_the_groups_messages(self) -> None:
        """Group messages are timed at the client's ack of that group; leaving
        the group counts what was never acked."""
        harness = GroupHarness()
        client, _ = harness.online(7)
        client.on_text(json.dumps({"type": "subscribe", "id": "s", "group": "room"}))
        now_ms = int(harness.clock.seconds() * 1000)
        acked = Delta(ACK, **{"class": "group", "when": "live"})
        left = Delta(UNTRACKED, **{"class": "group", "reason": "closed"})
        harness.store.reads[0][1].callback(
            [entry(f"{now_ms}-0", now_ms), entry(f"{now_ms}-1", now_ms)]
        )

        client.on_text(
            json.dumps({"type": "ack", "group": "room", "upto": f"{now_ms}-0"})
        )
        self.assertEqual(acked(), 1)
        client.on_text(json.dumps({"type": "unsubscribe", "id": "u", "group": "room"}))
        self.assertEqual(left(), 1)
