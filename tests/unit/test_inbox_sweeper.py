"""InboxSweeper: the timer that bounds delivery delay when notices are lost."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from wsha.services.inbox_sweeper import InboxSweeper


class InboxSweeperTests(SynchronousTestCase):
    """Sweeps slowly while Kafka works, fast while it does not, at once on return."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.sweeps = 0
        self.sweeper = InboxSweeper(self.clock, self.count, 30.0, 1.0)

    def count(self) -> None:
        """The poke_all stand-in: counts sweeps."""
        self.sweeps += 1

    def test_fast_sweeps_while_kafka_is_unreachable(self) -> None:
        """Before Kafka is known healthy the sweeper pulls every fallback interval."""
        self.sweeper.startService()
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.assertEqual(self.sweeps, 2)
        self.sweeper.stopService()

    def test_slow_sweeps_while_kafka_works(self) -> None:
        """With Kafka healthy the sweeper waits the long interval between pulls."""
        self.sweeper.set_kafka_healthy(True)
        self.sweeper.startService()
        self.clock.advance(29.0)
        self.assertEqual(self.sweeps, 0)
        self.clock.advance(1.0)
        self.assertEqual(self.sweeps, 1)
        self.sweeper.stopService()

    def test_kafka_returning_sweeps_at_once_then_slows_down(self) -> None:
        """Notices lost in an outage are made up for by a sweep the moment it ends."""
        self.sweeper.startService()
        self.clock.advance(1.0)
        self.sweeper.set_kafka_healthy(True)
        self.assertEqual(self.sweeps, 2)
        self.clock.advance(29.0)
        self.assertEqual(self.sweeps, 2)
        self.clock.advance(1.0)
        self.assertEqual(self.sweeps, 3)
        self.sweeper.stopService()

    def test_losing_kafka_switches_to_the_fast_pace(self) -> None:
        """An outage shortens the interval without waiting out the long one."""
        self.sweeper.set_kafka_healthy(True)
        self.sweeper.startService()
        self.sweeper.set_kafka_healthy(False)
        self.clock.advance(1.0)
        self.assertEqual(self.sweeps, 1)
        self.sweeper.stopService()

    def test_a_failing_sweep_does_not_stop_the_timer(self) -> None:
        """An error in one sweep is logged and the next sweep still happens."""
        calls: list[int] = []

        def failing() -> None:
            calls.append(1)
            raise RuntimeError("boom")

        sweeper = InboxSweeper(self.clock, failing, 30.0, 1.0)
        sweeper.startService()
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.assertEqual(len(calls), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        sweeper.stopService()

    def test_stopped_sweeper_leaves_no_pending_call(self) -> None:
        """Stopping cancels the timer."""
        self.sweeper.startService()
        self.sweeper.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_zero_interval_disables_the_slow_sweep(self) -> None:
        """An interval of 0 means no sweeps while Kafka works."""
        sweeper = InboxSweeper(self.clock, self.count, 0.0, 1.0)
        sweeper.set_kafka_healthy(True)
        sweeper.startService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        sweeper.stopService()
