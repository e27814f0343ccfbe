"""AdmissionGate: how many new connections a node takes per second.

A reconnect storm (a node died, a balancer restarted) sends thousands of
clients at the survivors at once. Each new connection costs a handshake, a
token check and a Redis claim; taking them all at once would stall the
reactor for every connection already open. The gate is a token bucket: it
admits ``burst`` connections at once and ``rate`` per second after that, and
the rest are told to come back later (close code 1013) while they are cheap.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

EPSILON = 1e-9
"""Float drift allowed when counting tokens (0.05 s twice is not quite 0.1 s)."""


class AdmissionGate:
    """A token bucket of new connections.

    :param rate: connections admitted per second once the burst is spent;
        0 or less admits everything.
    :param burst: the bucket's size: connections admitted at once.
    :param clock: the time source.
    """

    log = Logger()

    def __init__(self, rate: float, burst: int, clock: IReactorTime):
        self.rate = rate
        self.burst = max(1, burst)
        self.turned_away = 0
        self._clock = clock
        self._tokens = float(self.burst)
        self._updated = clock.seconds()
        self._turning_away = 0

    @property
    def limited(self) -> bool:
        """Whether the gate limits at all."""
        return self.rate > 0

    def admit(self) -> bool:
        """Take a token for one new connection; False when none is left."""
        if not self.limited:
            return True
        self._refill()
        if self._tokens >= 1.0 - EPSILON:
            self._tokens = max(0.0, self._tokens - 1.0)
            if self._turning_away:
                self.log.info(
                    "Admitting new connections again; {count} turned away",
                    count=self._turning_away,
                )
                self._turning_away = 0
            return True
        if not self._turning_away:
            self.log.warn(
                "Admission limit reached: turning away new connections above "
                "{rate}/s (burst {burst}) with 1013",
                rate=self.rate,
                burst=self.burst,
            )
        self._turning_away += 1
        self.turned_away += 1
        return False

    def _refill(self) -> None:
        now = self._clock.seconds()
        elapsed = max(0.0, now - self._updated)
        self._updated = now
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
