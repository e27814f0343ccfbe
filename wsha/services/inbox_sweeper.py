"""InboxSweeper: pulls every local session's inbox on a timer.

Kafka notices only say "look at the inbox now"; the inbox holds the messages.
A notice lost to a broker outage therefore only delays delivery until the next
pull, and this service bounds that delay: a slow sweep while notices flow, a
fast one while Kafka is unreachable, and one at once when it comes back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger


class InboxSweeper(service.Service):
    """Calls ``poke_all`` every ``interval`` seconds, or ``fallback_interval``
    seconds while Kafka is unreachable.

    :param clock: schedules the sweeps.
    :param poke_all: makes every local session pull its inbox.
    :param interval: seconds between sweeps while notices flow; 0 disables them.
    :param fallback_interval: seconds between sweeps while Kafka is unreachable.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        poke_all: Callable[[], None],
        interval: float,
        fallback_interval: float,
    ):
        self._clock = clock
        self._poke_all = poke_all
        self._interval = interval
        self._fallback_interval = fallback_interval
        self.kafka_healthy = False
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        """Start sweeping at the pace that fits Kafka's current health."""
        service.Service.startService(self)
        self._restart()

    def stopService(self) -> None:
        """Stop sweeping."""
        service.Service.stopService(self)
        self._stop_loop()

    def set_kafka_healthy(self, healthy: bool) -> None:
        """Follow Kafka's health; sweep at once when it comes back."""
        self.kafka_healthy = healthy
        if healthy and self.running:
            # Notices sent during the outage may be lost: catch up now.
            self.sweep()
        if self.running:
            self._restart()

    @property
    def current_interval(self) -> float:
        """Seconds between sweeps now (0: not sweeping)."""
        return self._interval if self.kafka_healthy else self._fallback_interval

    def sweep(self) -> None:
        """Make every local session pull its inbox once."""
        try:
            self._poke_all()
        except Exception:
            self.log.failure("Inbox sweep failed")

    def _restart(self) -> None:
        self._stop_loop()
        interval = self.current_interval
        if interval > 0:
            self._loop = LoopingCall(self.sweep)
            self._loop.clock = self._clock
            self._loop.start(interval, now=False).addErrback(self._loop_died)

    def _stop_loop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _loop_died(self, reason: Any) -> None:
        self.log.failure("Inbox sweep loop died", reason)
