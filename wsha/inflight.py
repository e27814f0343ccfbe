"""InFlight: the work a node has accepted and not finished yet.

A send or publish that a client handed over before a drain began must still
be stored (and acknowledged, if its connection is still there) before the
node stops its stores. The gateway tracks each such piece of work here, and
the drain waits until none is left.
"""

from __future__ import annotations

from typing import Any, TypeVar

from twisted.internet.defer import Deferred, succeed

T = TypeVar("T")


class InFlight:
    """Counts Deferreds that have not fired yet, and says when none is left."""

    def __init__(self) -> None:
        self.count = 0
        self._waiters: list[Deferred[None]] = []

    def track(self, d: Deferred[T]) -> Deferred[T]:
        """Count ``d`` until it fires; return it unchanged (its result passes)."""
        if d.called:
            return d
        self.count += 1
        d.addBoth(self._finished)
        return d

    def idle(self) -> Deferred[None]:
        """Fire once nothing tracked is pending (at once if nothing is)."""
        if not self.count:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def _finished(self, result: Any) -> Any:
        self.count -= 1
        if not self.count:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)
        return result
