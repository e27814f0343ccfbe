"""The client's outbox: sends and publishes kept until the gateway acknowledges them.

Frames are written in the order they were queued, at most ``max_in_flight``
unanswered at a time. After any retryable error the outbox holds new writes
for a backoff, then writes everything unacknowledged again, oldest first: the
gateway refuses later sends of a link until the failed one comes again, so
this keeps a client's sends in the order it made them (docs/protocol.md).
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure


class SendRejected(Exception):
    """The gateway refused a send for good (``retry`` false); ``code`` says why."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass
class Backoff:
    """Capped exponential backoff with full jitter: uniform(0, min(cap, base*2^n))."""

    base: float = 0.2
    cap: float = 15.0
    attempts: int = 0

    def next_delay(self, rng: random.Random) -> float:
        """The wait before the next attempt; each call counts one attempt."""
        # The exponent is bounded: 2**1024 and above cannot become a float.
        delay = rng.uniform(0, min(self.cap, self.base * (2 ** min(self.attempts, 64))))
        self.attempts += 1
        return delay

    def reset(self) -> None:
        """Start over after a connection that worked."""
        self.attempts = 0


class ResendCount(Protocol):
    """Where the outbox counts the frames it wrote again (the client's stats)."""

    resends: int


def _also_fire(result: Any, other: Deferred[Any]) -> Any:
    """Pass ``result`` on to ``other`` too, and keep it for the next callback."""
    if isinstance(result, Failure):
        other.errback(result)
        return result
    other.callback(result)
    return result


class Outbox:
    """Frames with an ``id`` waiting for the gateway's ``ack``.

    :param reactor: schedules the resend after a retryable error.
    :param write: writes a frame on the current link; False if there is none
        (or it is not welcomed yet): the frame waits for :meth:`send_all_again`.
    :param rng: draws the backoff's jitter.
    :param max_pending: the most frames kept; past it ``enqueue`` fails at once.
    :param max_in_flight: the most frames written and not yet answered.
    :param stats: counts the frames written again (``resends``).
    """

    def __init__(
        self,
        reactor: Any,
        write: Callable[[dict[str, Any]], bool],
        rng: random.Random,
        max_pending: int = 10_000,
        max_in_flight: int = 256,
        stats: ResendCount | None = None,
    ):
        self._reactor = reactor
        self._write = write
        self._rng = rng
        self.max_pending = max_pending
        self.max_in_flight = max_in_flight
        # Paces resends after retryable errors (Redis away, say); reset by acks.
        self.backoff = Backoff(base=0.5, cap=5.0)
        self._stats = stats
        self._pending: OrderedDict[
            str, tuple[dict[str, Any], Deferred[dict[str, Any]]]
        ] = OrderedDict()
        self._unwritten: deque[str] = deque()
        self._written: set[str] = set()
        self._resend_call: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def enqueue(self, frame: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """Keep ``frame`` until acknowledged; fires with the ``ack`` frame."""
        d: Deferred[dict[str, Any]] = Deferred()
        queued = self._pending.get(frame["id"])
        if queued is not None:
            # Already on its way under this id: answer both callers together.
            queued[1].addBoth(_also_fire, d)
            return d
        if len(self._pending) >= self.max_pending:
            d.errback(SendRejected("queue_full", "too many unacknowledged sends"))
            return d
        self._pending[frame["id"]] = (frame, d)
        self._unwritten.append(frame["id"])
        self.pump()
        return d

    def acknowledged(self, frame: dict[str, Any]) -> None:
        """An ``ack``: the frame with its ``id`` is stored; fire its Deferred."""
        entry = self._pending.pop(frame.get("id", ""), None)
        if entry is not None:
            self.backoff.reset()
            self._written.discard(entry[0]["id"])
            entry[1].callback(frame)
            self.pump()

    def refused(self, frame: dict[str, Any]) -> bool:
        """An ``error``: act on it if it names a kept frame; False if it does not."""
        client_id = frame.get("id")
        if not isinstance(client_id, str) or client_id not in self._pending:
            return False
        if frame.get("retry"):
            # The gateway refuses every later send of this link until this one
            # comes again, so holding new sends and then resending everything
            # unacknowledged, oldest first, keeps the sends in order.
            if self._resend_call is None:
                delay = self.backoff.next_delay(self._rng)
                self._resend_call = self._reactor.callLater(delay, self._resend)
            return True
        _, d = self._pending.pop(client_id)
        self._written.discard(client_id)
        d.errback(SendRejected(str(frame.get("code")), str(frame.get("message"))))
        self.pump()
        return True

    def send_all_again(self) -> None:
        """A new link (or the end of a hold): write everything kept, oldest first."""
        self.cancel_hold()
        if self._stats is not None:
            self._stats.resends += len(self._written)
        self._written.clear()
        self._unwritten = deque(self._pending)
        self.pump()

    def cancel_hold(self) -> None:
        """Stop waiting to resend (the client stops, or a new link starts over)."""
        if self._resend_call is not None and self._resend_call.active():
            self._resend_call.cancel()
        self._resend_call = None

    def pump(self) -> None:
        """Write kept frames in order while fewer than ``max_in_flight`` are
        unanswered (the gateway queues a bounded number per connection)."""
        if self._resend_call is not None:
            return
        while self._unwritten and len(self._written) < self.max_in_flight:
            client_id = self._unwritten.popleft()
            entry = self._pending.get(client_id)
            if entry is None or client_id in self._written:
                continue
            if not self._write(entry[0]):
                self._unwritten.appendleft(client_id)
                return
            self._written.add(client_id)

    def _resend(self) -> None:
        self._resend_call = None
        self.send_all_again()
