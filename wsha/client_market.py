"""The client side of market data: what a client watches, and where it resumes.

:class:`Watchlist` keeps each watched instrument with the last tick id seen,
subscribes again after every reconnect with ``after`` set to it (so the
gateway sends exactly the ticks missed, or the latest marked conflated), and
drops any tick at or below an id already handled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from wsha import wire

Frame = dict[str, Any]


class WatchRefused(Exception):
    """The gateway refused a subscription for good; ``code`` says why."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


class Watchlist:
    """The instruments one client watches.

    :param write: writes a frame on the current connection; False if there
        is none (the next :meth:`resubscribe` sends it).
    :param on_tick: called with each new ``tick`` frame, in order per instrument.
    :param clock: paces subscriptions retried after a retryable error.
    :param retry_delay: seconds before such a retry.
    """

    log = Logger()

    def __init__(
        self,
        write: Callable[[Frame], bool],
        on_tick: Callable[[Frame], None],
        clock: IReactorTime,
        retry_delay: float = 1.0,
    ):
        self._write = write
        self._on_tick = on_tick
        self._clock = clock
        self._retry_delay = retry_delay
        self.last_ids: dict[str, str | None] = {}
        self._requests: dict[str, str] = {}
        self._waiters: dict[str, list[Deferred[Frame]]] = {}
        self._retries: dict[str, IDelayedCall] = {}
        self._count = 0

    def watch(self, instrument: str, after: str | None = None) -> Deferred[Frame]:
        """Watch ``instrument`` from ``after`` (or its latest value).

        Fires with the ``subscribed`` frame, or fails with :class:`WatchRefused`.
        """
        d: Deferred[Frame] = Deferred()
        self._waiters.setdefault(instrument, []).append(d)
        self.last_ids[instrument] = after
        self._subscribe(instrument)
        return d

    def unwatch(self, instrument: str) -> None:
        """Stop watching ``instrument``; ticks of it still on the way are dropped.

        A :meth:`watch` not answered yet is cancelled.
        """
        self.last_ids.pop(instrument, None)
        self._cancel_retry(instrument)
        for d in self._waiters.pop(instrument, []):
            d.cancel()
        self._write({"type": "unsubscribe", "instrument": instrument})

    def resubscribe(self) -> None:
        """A new connection is up: subscribe to everything again, from the last ids."""
        self._requests.clear()
        for instrument in list(self.last_ids):
            self._cancel_retry(instrument)
            self._subscribe(instrument)

    def stop(self) -> None:
        """Cancel pending retries (the client is stopping)."""
        for instrument in list(self._retries):
            self._cancel_retry(instrument)

    def on_frame(self, frame: Frame) -> bool:
        """Handle ``frame`` if it is market data's; say whether it was."""
        kind = frame.get("type")
        if kind == "tick":
            self._tick(frame)
            return True
        request = frame.get("id")
        if not isinstance(request, str) or request not in self._requests:
            return False
        instrument = self._requests.pop(request)
        if kind == "subscribed":
            for d in self._waiters.pop(instrument, []):
                d.callback(frame)
        elif kind == "error":
            self._refused(instrument, frame)
        return True

    def _subscribe(self, instrument: str) -> None:
        self._count += 1
        request = f"w{self._count}"
        frame: Frame = {"type": "subscribe", "id": request, "instrument": instrument}
        after = self.last_ids.get(instrument)
        if after is not None:
            frame["after"] = after
        if self._write(frame):
            self._requests[request] = instrument

    def _tick(self, frame: Frame) -> None:
        instrument, entry_id = frame.get("instrument"), frame.get("id")
        if not isinstance(instrument, str) or not isinstance(entry_id, str):
            return
        if instrument not in self.last_ids:
            return
        last = self.last_ids[instrument]
        if last is not None and wire.stream_id_key(entry_id) <= wire.stream_id_key(
            last
        ):
            return
        self.last_ids[instrument] = entry_id
        self._on_tick(frame)

    def _refused(self, instrument: str, frame: Frame) -> None:
        if instrument not in self.last_ids:
            return
        if frame.get("retry"):
            if instrument not in self._retries:
                self._retries[instrument] = self._clock.callLater(
                    self._retry_delay, self._retry, instrument
                )
            return
        del self.last_ids[instrument]
        error = WatchRefused(str(frame.get("code")), str(frame.get("message")))
        waiters = self._waiters.pop(instrument, [])
        for d in waiters:
            d.errback(error)
        if not waiters:
            self.log.warn(
                "Watch of {instrument} refused: {code}",
                instrument=instrument,
                code=error.code,
            )

    def _retry(self, instrument: str) -> None:
        del self._retries[instrument]
        if instrument in self.last_ids:
            self._subscribe(instrument)

    def _cancel_retry(self, instrument: str) -> None:
        call = self._retries.pop(instrument, None)
        if call is not None and call.active():
            call.cancel()
