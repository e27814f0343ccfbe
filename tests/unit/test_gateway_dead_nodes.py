"""Unit tests for the gateway's side of dead nodes: no notices to them, and a
reaped node's connections closed."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.unit.fakes import GatewayHarness, appended, make_claim
from wsha import wire
from wsha.reaper import NodeLiveness


class DeadNodeRoutingTests(SynchronousTestCase):
    """Messages for sessions on a dead node stay in the inbox, un-notified."""

    def setUp(self) -> None:
        self.harness = GatewayHarness()
        self.gateway = self.harness.gateway
        self.liveness = NodeLiveness(self.harness.clock)
        self.gateway.live_nodes = self.liveness

    def test_no_notice_to_a_node_known_dead(self) -> None:
        """The append names a live and a dead node: only the live one is told; the
        message is stored all the same (the append has answered)."""
        self.liveness.observe(["gw-2"], ["gw-3"])
        d = self.gateway.submit("alice", "bob", "c1", '"x"')
        self.harness.inbox.appends[0][1].callback(appended("1-0", "gw-2", "gw-3"))
        self.harness.clock.advance(0)

        self.assertEqual(self.successResultOf(d).id, "1-0")
        self.assertEqual([node for node, _, _ in self.harness.bus.sent], ["gw-2"])

    def test_node_not_seen_yet_is_notified(self) -> None:
        """A node no scan has seen (it just started) counts as live."""
        self.gateway.submit("alice", "bob", "c1", '"x"')
        self.harness.inbox.appends[0][1].callback(appended("1-0", "gw-new"))
        self.harness.clock.advance(0)
        self.assertEqual([node for node, _, _ in self.harness.bus.sent], ["gw-new"])

    def test_no_takeover_notice_to_a_dead_node(self) -> None:
        """A session claimed from a dead node sends that node no takeover notice."""
        self.liveness.observe([], ["gw-2"])
        client, link, pending = self.harness.connect()
        pending.callback(make_claim(9, previously_online=True, previous_node="gw-2"))

        self.assertEqual(self.harness.bus.sent, [])
        self.assertEqual(len(link.of_type("welcome")), 1)
        self.assertIs(self.gateway.local["alice"]["phone"], client)


class ReapedNodeTests(SynchronousTestCase):
    """A node told it was declared dead closes its connections."""

    def test_close_local_sessions_closes_every_connection(self) -> None:
        """Every live session here is closed with the code given."""
        harness = GatewayHarness()
        _, phone = harness.online(epoch=1, user="alice", session="phone")
        _, laptop = harness.online(epoch=2, user="alice", session="laptop")
        _, other = harness.online(epoch=3, user="bob", session="phone")

        harness.gateway.close_local_sessions(
            wire.CLOSE_RESTARTING, "node declared dead"
        )

        for link in (phone, laptop, other):
            self.assertEqual(
                link.closes, [(wire.CLOSE_RESTARTING, "node declared dead")]
            )
