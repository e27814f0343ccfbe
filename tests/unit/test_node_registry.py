"""Unit tests for :mod:`wsha.services.node_registry`: heartbeats, scans, stop."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.node_fakes import FakeNodeStore, FakeSessions, FakeTopics
from wsha import __version__
from wsha.reaper import DeadNodeReaper
from wsha.services.node_registry import NodeRegistryService, RegistryTiming

TIMING = RegistryTiming(heartbeat_interval=2.0, ttl=6.0, reaper_interval=3.0)


class RegistryServiceTests(SynchronousTestCase):
    """The service's timing and reactions, on a Clock and in-memory fakes."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000)
        self.store = FakeNodeStore()
        self.sessions = FakeSessions()
        self.reaper = DeadNodeReaper(
            "me",
            self.store,  # type: ignore[arg-type]
            self.sessions,  # type: ignore[arg-type]
            FakeTopics(),
            self.clock,
            60.0,
        )
        self.connections = 0
        self.reaped: list[None] = []
        self.service = NodeRegistryService(
            self.clock,
            self.store,  # type: ignore[arg-type]
            self.reaper,
            "me",
            lambda: ("ws://me/ws", "http://me", self.connections),
            TIMING,
            lambda: self.reaped.append(None),
        )

    def start(self) -> None:
        """Start the service; its first registration completes at once."""
        self.successResultOf(self.service.startService())

    def stop(self) -> None:
        """Stop the service and check it left no timer behind."""
        self.successResultOf(self.service.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_registers_at_start_then_every_interval(self) -> None:
        """The first heartbeat is the process's fresh registration at start; then
        one every heartbeat interval, each carrying the current facts."""
        self.start()
        self.assertEqual([first for _, _, first in self.store.heartbeats], [True])

        self.connections = 3
        self.service.state = "draining"
        self.clock.advance(2.0)
        self.clock.advance(2.0)
        self.assertEqual(
            [first for _, _, first in self.store.heartbeats], [True, False, False]
        )
        record, ttl_ms, _ = self.store.heartbeats[-1]
        self.assertEqual(ttl_ms, 6_000)
        self.assertEqual(
            (record.id, record.url, record.control_url, record.version),
            ("me", "ws://me/ws", "http://me", __version__),
        )
        self.assertEqual((record.state, record.connections), ("draining", 3))
        self.assertEqual(record.started_at, 1_000_000)
        self.assertEqual(record.heartbeat_at, 1_004_000)
        self.stop()

    def test_registers_the_version_label_it_was_given(self) -> None:
        """A node started with a version label registers it as its version."""
        self.service = NodeRegistryService(
            self.clock,
            self.store,  # type: ignore[arg-type]
            self.reaper,
            "me",
            lambda: ("ws://me/ws", "http://me", 0),
            TIMING,
            lambda: None,
            version="green",
        )
        self.start()
        record, _, _ = self.store.heartbeats[-1]
        self.assertEqual(record.version, "green")
        self.stop()

    def test_start_cleans_up_after_an_earlier_process_first(self) -> None:
        """Sessions an earlier process with this id left are marked offline before
        the registration, so none of them stays online at a node that lost them."""
        self.store.add_node("me", self.sessions.own("me", "u", "phone", 5))
        self.start()
        self.assertEqual(self.sessions.offline, [("u", "phone")])
        self.stop()

    def test_no_reaping_until_heartbeats_held_for_a_ttl(self) -> None:
        """A dead node is reaped only once this node's own heartbeats have worked
        for a whole TTL, counted again from each failed heartbeat."""
        self.store.add_node("gone", self.sessions.own("gone", "u", "phone", 5))
        self.store.expire("gone")
        self.start()

        self.clock.advance(3.0)
        self.assertEqual(self.sessions.offline, [])

        self.store.down = True
        self.clock.advance(1.0)  # heartbeat at 4 s fails
        self.store.down = False
        self.clock.pump([1.0] * 7)  # heartbeats from 6 s on work; scans at 6, 9
        self.assertEqual(self.sessions.offline, [])

        self.clock.advance(1.0)  # scan at 12 s: healthy for 6 s
        self.assertEqual(self.sessions.offline, [("u", "phone")])
        self.stop()

    def test_frozen_node_does_not_reap_on_waking(self) -> None:
        """After a freeze longer than the TTL (no heartbeat ran), the node waits a
        whole TTL of working heartbeats before it reaps: the others' registrations
        it sees may be stale only because it was not looking."""
        self.store.add_node("gone", self.sessions.own("gone", "u", "phone", 5))
        self.store.expire("gone")
        self.start()
        self.clock.advance(2.0)
        self.assertEqual(self.service.healthy_for(), 2.0)

        self.clock.advance(7.0)  # frozen: every due timer fires only now, once
        self.assertEqual(self.service.healthy_for(), 0.0)
        self.assertEqual(self.sessions.offline, [])

        self.clock.pump([1.0] * 6)
        self.assertEqual(self.sessions.offline, [("u", "phone")])
        self.stop()

    def test_heartbeat_failure_is_logged_and_the_loop_goes_on(self) -> None:
        """A failed heartbeat neither stops the loop nor escapes as an error."""
        self.start()
        self.store.down = True
        self.clock.advance(2.0)
        self.store.down = False
        self.clock.advance(2.0)
        self.assertEqual(len(self.store.heartbeats), 2)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.stop()

    def test_starts_without_redis_and_registers_when_it_is_back(self) -> None:
        """With Redis down at start the node starts; the first heartbeat that works
        is the fresh registration."""
        self.store.down = True
        self.start()
        self.assertFalse(self.service.registered)

        self.store.down = False
        self.clock.advance(2.0)
        self.assertTrue(self.service.registered)
        self.assertEqual([first for _, _, first in self.store.heartbeats], [True])
        self.stop()

    def test_reaped_node_closes_its_connections_once(self) -> None:
        """A heartbeat finding that survivors cleaned up after this node (it was cut
        off longer than the TTL) makes it close its connections, once."""
        self.start()
        self.store.expire("me")
        self.store.records["me"] = {"state": "cleaning", "runs": 1, "sessions": 0}
        self.clock.advance(2.0)
        self.clock.advance(2.0)
        self.assertEqual(self.reaped, [None])
        self.stop()

    def test_expired_but_not_reaped_keeps_its_connections(self) -> None:
        """A registration that expired with nobody cleaning up is just renewed."""
        self.start()
        self.store.expire("me")
        self.clock.advance(2.0)
        self.assertIn("me", self.store.registered)
        self.assertEqual(self.reaped, [])
        self.stop()

    def test_clean_stop_marks_sessions_offline_and_deregisters(self) -> None:
        """Stopping marks this node's remaining sessions offline, removes its
        registration, retires its topic, and stops every timer."""
        self.start()
        self.store.index["me"] = {self.sessions.own("me", "u", "phone", 5)}
        self.stop()

        self.assertEqual(self.sessions.offline, [("u", "phone")])
        self.assertEqual(self.store.deregistered, ["me"])
        self.assertNotIn("me", self.store.registered)
        self.assertNotIn("me", self.store.known)
        self.assertEqual(self.store.retired, {"me": 1_060.0})

        beats = len(self.store.heartbeats)
        self.clock.advance(10.0)
        self.assertEqual(len(self.store.heartbeats), beats)

    def test_stop_with_redis_down_still_stops(self) -> None:
        """A stop that cannot reach Redis logs it and finishes; the registration
        is left to expire."""
        self.start()
        self.store.down = True
        self.stop()
        self.assertEqual(self.store.deregistered, [])

    def test_listing_shows_registered_and_dead_nodes(self) -> None:
        """The listing has each registered node's record and the dead nodes' ids."""
        self.store.add_node("other")
        self.store.add_node("gone")
        self.store.expire("gone")
        self.start()
        listing: dict[str, Any] = self.successResultOf(self.service.listing())

        self.assertEqual(listing["node"], "me")
        self.assertEqual([n["id"] for n in listing["nodes"]], ["me", "other"])
        self.assertEqual(listing["nodes"][0]["url"], "ws://me/ws")
        self.assertEqual(listing["dead"], ["gone"])
        self.stop()
