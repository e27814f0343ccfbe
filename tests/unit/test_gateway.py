"""Unit tests for :class:`wsha.gateway.Gateway`: fencing, takeover and notices."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.fakes import GatewayHarness, appended, make_claim
from wsha import topics, wire
from wsha.services.redis_service import RedisUnavailable


def takeover(epoch: object, user: str = "alice", session: str = "phone") -> bytes:
    """A takeover notice as another node sends it."""
    return json.dumps(
        {"kind": "takeover", "user": user, "session": session, "epoch": epoch}
    ).encode()


class TakeoverTests(SynchronousTestCase):
    """One owner per session: older connections close with 4001, newer never."""

    def setUp(self) -> None:
        self.harness = GatewayHarness()
        self.gateway = self.harness.gateway

    def test_take_over_closes_only_for_a_newer_epoch(self) -> None:
        """take_over(e) closes with 4001 only when e is above the session's epoch."""
        client, link = self.harness.online(epoch=7)
        client.take_over(6)
        client.take_over(7)
        self.assertEqual(link.closes, [])

        client.take_over(8)
        self.assertEqual(link.closes, [(wire.CLOSE_TAKEN_OVER, "session taken over")])

    def test_newer_local_claim_evicts_the_older(self) -> None:
        """A second connection of a session on this node closes the first with 4001."""
        _, old_link = self.harness.online(epoch=1)
        new, new_link = self.harness.online(epoch=2)

        self.assertEqual(old_link.closes[0][0], wire.CLOSE_TAKEN_OVER)
        self.assertEqual(new_link.closes, [])
        self.assertIs(self.gateway.local["alice"]["phone"], new)

    def test_release_of_old_owner_keeps_the_newer_session(self) -> None:
        """The evicted connection releases its own epoch and leaves the new one."""
        old, _ = self.harness.online(epoch=1)
        new, _ = self.harness.online(epoch=2)
        old.connection_lost()

        self.assertEqual(self.harness.registry.releases, [("alice", "phone", "1")])
        self.assertIs(self.gateway.local["alice"]["phone"], new)
        self.assertEqual(self.gateway.connection_count(), 1)

        new.connection_lost()
        self.assertEqual(self.harness.registry.releases[-1], ("alice", "phone", "2"))
        self.assertEqual(self.gateway.connection_count(), 0)

    def test_late_claim_with_older_epoch_closes_itself(self) -> None:
        """A claim returning after a newer local one closes its own connection."""
        _, slow_link, slow_claim = self.harness.connect()
        fast, fast_link, fast_claim = self.harness.connect()
        fast_claim.callback(make_claim(6))
        slow_claim.callback(make_claim(5))

        self.assertEqual(slow_link.closes[0][0], wire.CLOSE_TAKEN_OVER)
        self.assertEqual(slow_link.of_type("welcome"), [])
        self.assertEqual(fast_link.closes, [])
        self.assertIs(self.gateway.local["alice"]["phone"], fast)

    def test_notice_before_own_claim_returns_closes_the_late_claim(self) -> None:
        """A takeover notice for a claim still in flight makes it close with 4001."""
        client, link, pending = self.harness.connect()
        self.gateway.on_notice(takeover(9))
        pending.callback(make_claim(8))

        self.assertEqual(link.closes[0][0], wire.CLOSE_TAKEN_OVER)
        self.assertEqual(link.of_type("welcome"), [])
        self.assertEqual(self.gateway.connection_count(), 0)
        self.assertIsNone(client.delivery)

    def test_older_notice_before_claim_does_not_close(self) -> None:
        """A takeover notice with an older epoch does not stop a newer claim."""
        _, link, pending = self.harness.connect()
        self.gateway.on_notice(takeover(3))
        pending.callback(make_claim(8))

        self.assertEqual(link.closes, [])
        self.assertEqual(len(link.of_type("welcome")), 1)

    def test_remembered_notice_expires(self) -> None:
        """A takeover notice for an absent session is forgotten after a while."""
        self.gateway.on_notice(takeover(9))
        self.harness.clock.advance(31)
        _, link, pending = self.harness.connect()
        pending.callback(make_claim(8))
        self.assertEqual(link.closes, [])
        self.assertEqual(self.harness.clock.getDelayedCalls(), [])

    def test_notice_closes_a_live_older_session(self) -> None:
        """A takeover notice with a newer epoch closes the live session here."""
        _, link = self.harness.online(epoch=4)
        self.gateway.on_notice(takeover(4))
        self.assertEqual(link.closes, [])
        self.gateway.on_notice(takeover(5))
        self.assertEqual(link.closes[0][0], wire.CLOSE_TAKEN_OVER)

    def test_claim_from_another_node_tells_that_node(self) -> None:
        """Claiming a session online elsewhere sends that node a takeover notice."""
        self.harness.online(epoch=11, previously_online=True, previous_node="gw-2")
        self.assertEqual(
            self.harness.bus.sent,
            [
                (
                    "gw-2",
                    {
                        "kind": "takeover",
                        "user": "alice",
                        "session": "phone",
                        "epoch": 11,
                    },
                    b"alice",
                )
            ],
        )

    def test_claim_from_this_node_sends_no_notice(self) -> None:
        """A session previously on this node, or offline, needs no notice."""
        self.harness.online(epoch=1, previously_online=True, previous_node="gw-1")
        self.harness.online(epoch=2, previously_online=False, previous_node="gw-9")
        self.assertEqual(self.harness.bus.sent, [])


class NoticeTests(SynchronousTestCase):
    """Inbox notices: batched per (node, user) per tick; bad ones ignored."""

    def setUp(self) -> None:
        self.harness = GatewayHarness()
        self.gateway = self.harness.gateway

    def submit(self, to: str, client_id: str, *nodes: str) -> None:
        """Submit a message whose append names ``nodes`` as the recipient's."""
        self.gateway.submit("alice", to, client_id, '"x"')
        self.harness.inbox.appends[-1][1].callback(appended("1-0", *nodes))

    def test_notices_in_one_tick_are_sent_once(self) -> None:
        """Several messages for one user on one node in a tick make one notice."""
        self.submit("bob", "c1", "gw-2", "gw-3")
        self.submit("bob", "c2", "gw-2")
        self.submit("carol", "c3", "gw-2")
        self.assertEqual(self.harness.bus.sent, [])

        self.harness.clock.advance(0)

        sent = sorted(
            (node, notice["user"]) for node, notice, _ in self.harness.bus.sent
        )
        self.assertEqual(sent, [("gw-2", "bob"), ("gw-2", "carol"), ("gw-3", "bob")])
        self.assertTrue(
            all(n["kind"] == topics.INBOX for _, n, _ in self.harness.bus.sent)
        )

        self.submit("bob", "c4", "gw-2")
        self.harness.clock.advance(0)
        self.assertEqual(len(self.harness.bus.sent), 4)

    def test_local_recipient_is_poked_not_notified(self) -> None:
        """A recipient on this node pulls its inbox; no notice goes to the bus."""
        self.harness.online(user="bob", session="s1")
        self.harness.inbox.reads[0][1].callback([])
        self.submit("bob", "c1", "gw-1")
        self.assertEqual(len(self.harness.inbox.reads), 1)

        self.harness.clock.advance(0)

        self.assertEqual(self.harness.bus.sent, [])
        self.assertEqual(self.harness.inbox.reads[1][0][:2], ("bob", "0-0"))

    def test_inbox_notice_pokes_local_sessions(self) -> None:
        """An inbox notice from another node makes the user's sessions pull."""
        self.harness.online(user="bob", session="s1")
        self.harness.inbox.reads[0][1].callback([])
        self.gateway.on_notice(topics.encode_inbox_notice("bob"))
        self.gateway.on_notice(topics.encode_inbox_notice("nobody"))
        self.assertEqual(len(self.harness.inbox.reads), 2)

    def test_failed_append_sends_no_notice(self) -> None:
        """A message that was not stored notifies nobody."""
        d = self.gateway.submit("alice", "bob", "c1", '"x"')
        self.harness.inbox.appends[0][1].errback(ConnectionError("down"))
        self.failureResultOf(d, ConnectionError)
        self.harness.clock.advance(0)
        self.assertEqual(self.harness.bus.sent, [])

    def test_malformed_notices_are_ignored(self) -> None:
        """Garbage, unknown kinds and takeovers with bad fields change nothing."""
        _, link = self.harness.online(epoch=1)
        for raw in (
            b"\xff\xfe",
            b"not json",
            b"[]",
            b'{"kind": "inbox"}',
            b'{"kind": "shutdown", "user": "alice"}',
            takeover("soon"),
            takeover(None),
            json.dumps({"kind": "takeover", "user": "alice", "epoch": 5}).encode(),
        ):
            self.gateway.on_notice(raw)

        self.assertEqual(link.closes, [])
        self.assertEqual(self.harness.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.harness.inbox.reads), 1)


class StoreRecoveryTests(SynchronousTestCase):
    """Releases that failed during a Redis outage are retried when it returns."""

    def setUp(self) -> None:
        self.harness = GatewayHarness()
        self.gateway = self.harness.gateway
        self.failing = True
        registry = self.harness.registry
        record = registry.release

        def release(user: str, session: str, epoch: str) -> Deferred[Any]:
            if self.failing:
                return fail(RedisUnavailable("redis down"))
            return record(user, session, epoch)

        registry.release = release  # type: ignore[method-assign]

    def test_failed_release_is_retried_on_recovery(self) -> None:
        """A connection lost while Redis is down is released once Redis is back,
        with its own epoch (fenced), and only once."""
        client, _ = self.harness.online(epoch=7)
        client.connection_lost()
        self.assertEqual(self.harness.registry.releases, [])

        self.failing = False
        self.gateway.store_recovered()
        self.gateway.store_recovered()

        self.assertEqual(self.harness.registry.releases, [("alice", "phone", "7")])

    def test_only_the_newest_epoch_is_retried(self) -> None:
        """Two connections of one session lost during the outage: the newer
        epoch's release is the one retried."""
        for epoch in (9, 8):
            client, _ = self.harness.online(epoch=epoch)
            client.connection_lost()

        self.failing = False
        self.gateway.store_recovered()

        self.assertEqual(self.harness.registry.releases, [("alice", "phone", "9")])

    def test_retry_failing_again_is_kept_for_the_next_recovery(self) -> None:
        """If Redis drops again during the retry, the release waits for the next."""
        client, _ = self.harness.online(epoch=3)
        client.connection_lost()
        self.gateway.store_recovered()
        self.assertEqual(self.harness.registry.releases, [])

        self.failing = False
        self.gateway.store_recovered()
        self.assertEqual(self.harness.registry.releases, [("alice", "phone", "3")])

    def test_recovery_pulls_every_live_session(self) -> None:
        """Recovery pokes each live session's delivery, so reads that failed
        during the outage resume at once."""
        self.harness.online(epoch=1, user="alice")
        self.harness.online(epoch=2, user="bob", session="tab")
        reads_before = len(self.harness.inbox.reads)
        for _, d in self.harness.inbox.reads:
            d.callback([])

        self.gateway.store_recovered()

        pulled = [args[0] for args, _ in self.harness.inbox.reads[reads_before:]]
        self.assertEqual(sorted(pulled), ["alice", "bob"])
