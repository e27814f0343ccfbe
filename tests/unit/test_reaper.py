"""Unit tests for :mod:`wsha.reaper`: which nodes are reaped, once, and how."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.node_fakes import FakeNodeStore, FakeSessions, FakeTopics
from wsha.reaper import DeadNodeReaper, NodeLiveness

DELAY = 60.0


class ReaperHarness(SynchronousTestCase):
    """Reaper "me" on fakes shared with any other reaper a test makes."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000)
        self.store = FakeNodeStore()
        self.sessions = FakeSessions()
        self.topics = FakeTopics()
        self.store.add_node("me")
        self.reaper = self.make_reaper("me")

    def make_reaper(self, node_id: str) -> DeadNodeReaper:
        """A reaper for ``node_id`` on the shared fakes."""
        return DeadNodeReaper(
            node_id,
            self.store,  # type: ignore[arg-type]
            self.sessions,  # type: ignore[arg-type]
            self.topics,
            self.clock,
            DELAY,
        )

    def dead_node_with(self, *sessions: str) -> list[str]:
        """Register node "gone" owning ``sessions`` of user u, then let it expire."""
        entries = [self.sessions.own("gone", "u", s, 5) for s in sessions]
        self.store.add_node("gone", *entries)
        self.store.expire("gone")
        return entries

    def scan(self, reaper: DeadNodeReaper | None = None, may_reap: bool = True) -> Any:
        """Run one scan to completion."""
        return self.successResultOf((reaper or self.reaper).scan(may_reap))


class ReaperTests(ReaperHarness):
    """Decisions of one or several reapers sharing one registry."""

    def test_expired_node_is_cleaned_up_and_forgotten(self) -> None:
        """A known node without registration has its sessions marked offline, is
        dropped from the known nodes, counts as dead, and its topic is retired."""
        self.dead_node_with("phone", "laptop")
        self.scan()

        self.assertEqual(
            sorted(self.sessions.offline), [("u", "laptop"), ("u", "phone")]
        )
        self.assertEqual(self.store.records["gone"]["sessions"], 2)
        self.assertEqual(self.store.records["gone"]["state"], "done")
        self.assertNotIn("gone", self.store.known)
        self.assertEqual(self.store.retired, {"gone": 1_000 + DELAY})
        self.assertFalse(self.reaper.liveness.is_live("gone"))
        self.assertEqual(self.store.orphan_sets["gone"], set())

    def test_registered_nodes_are_left_alone(self) -> None:
        """A node whose registration is current is neither cleaned nor called dead."""
        self.store.add_node("other", self.sessions.own("other", "u", "phone", 5))
        self.scan()

        self.assertEqual(self.sessions.offline, [])
        self.assertEqual(self.store.records, {})
        self.assertTrue(self.reaper.liveness.is_live("other"))

    def test_never_reaps_itself(self) -> None:
        """A reaper whose own registration lapsed does not clean up after itself."""
        self.store.index["me"] = {self.sessions.own("me", "u", "phone", 5)}
        self.store.expire("me")
        self.scan()

        self.assertEqual(self.sessions.offline, [])
        self.assertTrue(self.reaper.liveness.is_live("me"))

    def test_no_reaping_until_allowed(self) -> None:
        """With may_reap False (own Redis link not yet trusted) nothing is cleaned
        and no node is called dead; a later allowed scan does the work."""
        self.dead_node_with("phone")
        self.scan(may_reap=False)

        self.assertEqual(self.sessions.offline, [])
        self.assertTrue(self.reaper.liveness.is_live("gone"))
        self.assertIn("gone", self.store.known)

        self.scan()
        self.assertEqual(self.sessions.offline, [("u", "phone")])

    def test_session_that_moved_on_is_not_touched(self) -> None:
        """Only entries still owned by the dead node at their epoch go offline."""
        moved, released, kept = (
            self.sessions.own("gone", "u", s, 5) for s in ("moved", "released", "kept")
        )
        self.sessions.own("live", "u", "moved", 6)
        self.sessions.owners[("u", "released")] = ("", "5")
        self.store.add_node("gone", moved, released, kept)
        self.store.expire("gone")
        self.scan()

        self.assertEqual(self.sessions.offline, [("u", "kept")])
        self.assertEqual(self.sessions.owners[("u", "moved")], ("live", "6"))
        self.assertEqual(self.store.records["gone"]["sessions"], 1)

    def test_two_reapers_clean_up_once(self) -> None:
        """Of two survivors scanning, one cleans up; the other only confirms it."""
        self.dead_node_with("phone")
        other = self.make_reaper("other")
        self.store.add_node("other")
        self.scan()
        self.store.known.add("gone")  # as read by the other before it was dropped
        self.scan(other)

        self.assertEqual(self.sessions.offline, [("u", "phone")])
        self.assertEqual(self.store.records["gone"]["runs"], 1)
        self.assertEqual(self.store.records["gone"]["by"], "me")
        self.assertNotIn("gone", self.store.known)
        self.assertFalse(other.liveness.is_live("gone"))

    def test_busy_lock_means_hands_off(self) -> None:
        """While another reaper holds the lock, this one neither cleans nor forgets."""
        self.dead_node_with("phone")
        self.store.locks["gone"] = "someone-else"
        self.scan()

        self.assertEqual(self.sessions.offline, [])
        self.assertIn("gone", self.store.known)
        self.assertEqual(self.store.retired, {})

    def test_lock_taken_over_mid_way_stops_the_cleanup(self) -> None:
        """A reaper whose lease ran out stops after the batch it was on and leaves
        forgetting the node to whoever holds the lock now."""
        self.dead_node_with("phone")
        progress = self.store.cleanup_progress

        def steal(*args: Any) -> Any:
            self.store.locks["gone"] = "thief"
            return progress(*args)

        self.store.cleanup_progress = steal  # type: ignore[method-assign]
        self.scan()

        self.assertEqual(self.store.locks, {"gone": "thief"})
        self.assertIn("gone", self.store.known)
        self.assertEqual(self.store.retired, {})
        self.assertEqual(self.store.records["gone"]["state"], "cleaning")

    def test_node_back_during_cleanup_is_kept(self) -> None:
        """A node that registers again while being cleaned up stays known and keeps
        its topic."""
        self.dead_node_with("phone")
        end = self.store.end_cleanup

        def comes_back(*args: Any) -> Any:
            self.store.add_node("gone")
            return end(*args)

        self.store.end_cleanup = comes_back  # type: ignore[method-assign]
        self.scan()

        self.assertIn("gone", self.store.known)
        self.assertEqual(self.store.retired, {})
        self.assertEqual(self.store.locks, {})

    def test_abandoned_cleanup_is_finished_by_the_next_reaper(self) -> None:
        """Entries left by a reaper that died mid-way (lock expired) are handled by
        the next one, which records a second run."""
        self.dead_node_with("phone", "laptop")
        self.successResultOf(
            self.store.begin_cleanup("gone", "dead-reaper", 30_000, "x", False)
        )
        del self.store.locks["gone"]  # its lease ran out
        self.scan()

        self.assertEqual(len(self.sessions.offline), 2)
        self.assertEqual(self.store.records["gone"]["runs"], 2)
        self.assertEqual(self.store.records["gone"]["state"], "done")

    def test_malformed_index_entry_is_dropped(self) -> None:
        """An entry that is not [user, session, epoch] is logged and removed."""
        self.dead_node_with("phone")
        self.store.add_node("gone", "not json")
        self.store.expire("gone")
        self.scan()

        self.assertEqual(self.sessions.offline, [("u", "phone")])
        self.assertEqual(self.store.orphan_sets["gone"], set())
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_own_cleanup_needs_no_expiry_and_leaves_no_record(self) -> None:
        """clean_up(own=True) marks the node's own leftover sessions offline while
        it is registered, and records nothing a heartbeat would take as a reap."""
        self.store.index["me"] = {self.sessions.own("me", "u", "phone", 5)}
        count = self.successResultOf(self.reaper.clean_up("me", own=True))

        self.assertEqual(count, 1)
        self.assertEqual(self.store.records, {})
        self.assertIn("me", self.store.known)

    def test_redis_failure_fails_the_scan(self) -> None:
        """A scan against an unreachable Redis fails (the service logs it)."""
        self.store.down = True
        self.failureResultOf(self.reaper.scan(True))


class TopicDeletionTests(ReaperHarness):
    """Dead nodes' topics are deleted once, after the delay."""

    def setUp(self) -> None:
        super().setUp()
        self.dead_node_with("phone")

    def test_topic_deleted_once_after_the_delay(self) -> None:
        """The topic survives the delay, is deleted by the first scan after it,
        and only once however many reapers scan."""
        self.scan()
        self.clock.advance(DELAY - 1)
        self.scan()
        self.assertEqual(self.topics.deleted, [])

        self.clock.advance(1)
        self.scan()
        self.scan(self.make_reaper("other"))
        self.assertEqual(self.topics.deleted, ["gone"])

    def test_failed_deletion_is_retried_later(self) -> None:
        """A deletion the broker refuses goes back on the list for another delay."""
        self.scan()
        self.clock.advance(DELAY)
        self.topics.failing = True
        self.scan()
        self.assertEqual(self.store.retired, {"gone": 1_000 + 2 * DELAY})

        self.topics.failing = False
        self.clock.advance(DELAY)
        self.scan()
        self.assertEqual(self.topics.deleted, ["gone"])

    def test_topic_of_a_node_registered_again_is_kept(self) -> None:
        """A node id registered again by the time its topic is due keeps it."""
        self.scan()
        self.store.add_node("gone")
        self.store.retired["gone"] = 0
        self.scan()
        self.assertEqual(self.topics.deleted, [])
        self.assertEqual(self.store.retired, {})


class LivenessTests(SynchronousTestCase):
    """NodeLiveness: what the gateway asks before sending a notice."""

    def test_unknown_nodes_count_as_live(self) -> None:
        """A node never seen (just started) is live."""
        self.assertTrue(NodeLiveness(Clock()).is_live("new"))

    def test_dead_until_seen_alive_or_forgotten(self) -> None:
        """A node seen dead stays dead until seen registered, or until the memory
        runs out after it was last seen dead."""
        clock = Clock()
        liveness = NodeLiveness(clock, memory=100)
        liveness.observe(["a"], ["b", "c"])
        self.assertEqual(liveness.dead(), ["b", "c"])

        liveness.observe(["b"], [])
        self.assertTrue(liveness.is_live("b"))

        clock.advance(60)
        liveness.observe([], ["d"])
        clock.advance(60)
        liveness.observe([], [])
        self.assertEqual(liveness.dead(), ["d"])
