"""Unit tests for :class:`wsha.admission.AdmissionGate`, on a Clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from wsha.admission import AdmissionGate


def admitted(gate: AdmissionGate, tries: int) -> int:
    """How many of ``tries`` immediate connection attempts the gate admits."""
    return sum(gate.admit() for _ in range(tries))


class AdmissionGateTests(SynchronousTestCase):
    """The token bucket: a burst at once, then a steady rate."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000)

    def test_burst_is_admitted_at_once_and_no_more(self) -> None:
        """A full bucket admits exactly ``burst`` connections at one instant."""
        gate = AdmissionGate(rate=10, burst=5, clock=self.clock)
        self.assertEqual(admitted(gate, 20), 5)
        self.assertEqual(gate.turned_away, 15)

    def test_tokens_come_back_at_the_rate(self) -> None:
        """After the burst, ``rate`` connections per second are admitted."""
        gate = AdmissionGate(rate=10, burst=5, clock=self.clock)
        admitted(gate, 5)

        self.clock.advance(0.05)
        self.assertEqual(admitted(gate, 10), 0)
        self.clock.advance(0.05)
        self.assertEqual(admitted(gate, 10), 1)
        self.clock.advance(1.0)
        self.assertEqual(admitted(gate, 100), 5)

    def test_steady_storm_gets_the_rate(self) -> None:
        """Under a storm that never stops, admissions over 10 s are the burst
        plus rate times the duration, whatever the attempt rate."""
        gate = AdmissionGate(rate=20, burst=10, clock=self.clock)
        total = admitted(gate, 5)
        for _ in range(1000):
            self.clock.advance(0.01)
            total += admitted(gate, 5)
        self.assertEqual(total, 10 + 20 * 10)

    def test_bucket_never_holds_more_than_the_burst(self) -> None:
        """An idle hour does not save up more than ``burst`` tokens."""
        gate = AdmissionGate(rate=100, burst=3, clock=self.clock)
        self.clock.advance(3600)
        self.assertEqual(admitted(gate, 10), 3)

    def test_zero_rate_admits_everything(self) -> None:
        """A rate of 0 means no limit."""
        gate = AdmissionGate(rate=0, burst=1, clock=self.clock)
        self.assertFalse(gate.limited)
        self.assertEqual(admitted(gate, 10_000), 10_000)
        self.assertEqual(gate.turned_away, 0)

    def test_clock_going_backwards_grants_nothing(self) -> None:
        """A clock stepping back does not mint or remove tokens."""
        gate = AdmissionGate(rate=10, burst=2, clock=self.clock)
        admitted(gate, 2)
        self.clock.rightNow -= 100
        self.assertEqual(admitted(gate, 5), 0)
        self.clock.advance(0.1)
        self.assertEqual(admitted(gate, 5), 1)
