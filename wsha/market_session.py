"""MarketSubscriptions: one connection's instruments, their snapshots and ticks.

A ``subscribe`` with an ``instrument`` is answered ``subscribed``, then the
instrument's latest value (a snapshot), or with ``after`` the ticks that
followed that id; then live ticks in stream order, never one at or below an id
already sent on the connection. While the connection's output is paused (the
client reads too slowly) only the latest tick per instrument is kept, and it
is written, marked ``conflated``, once the output drains. Frames about one
instrument are handled one after another, in the order they came.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsha import metrics, wire
from wsha.market import Tick
from wsha.services.market_feed import TickWatcher
from wsha.services.redis_service import RedisUnavailable

MAX_INSTRUMENTS = 256
"""Instruments one connection may watch at once."""

RESUME_CAP = 100
"""The most missed ticks a resume (``after``) replays; past it, only the latest."""

MAX_QUEUED_FRAMES = 1024
"""Subscription frames waiting behind others of their instrument; past it, 1013."""

SubscriptionFrame = wire.Subscribe | wire.Unsubscribe


class InstrumentReader(Protocol):
    """What a connection reads from the instruments' store."""

    def latest(self, instrument: str) -> Deferred[Any]:
        """Fire with the newest :class:`Tick` of ``instrument``, or None."""

    def tail(self, instrument: str, since: str, count: int) -> Deferred[Any]:
        """Fire with ``(ticks, contiguous)`` after ``since`` (see InstrumentStore)."""


class Feed(Protocol):
    """What a connection needs from the node's market feed."""

    def watch(self, instrument: str, watcher: TickWatcher, after: str) -> None:
        """Send ``watcher`` the ticks of ``instrument`` that follow ``after``."""

    def unwatch(self, instrument: str, watcher: TickWatcher) -> None:
        """Stop sending ``watcher`` ticks of ``instrument``."""


class Output(Protocol):
    """The connection's output (an :class:`~wsha.output_gate.OutputGate`)."""

    @property
    def writable(self) -> bool:
        """Whether ticks should be written now, or held back (conflated)."""

    def send_frame(self, payload: bytes) -> None:
        """Write one frame."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection."""

    def on_resume(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` whenever the output becomes writable again."""


@dataclass(frozen=True)
class MarketData:
    """Where a node's connections get market data from, and their limits.

    :param store: reads snapshots and resumes.
    :param feed: the node's reader of live ticks.
    :param max_instruments: instruments one connection may watch.
    :param resume_cap: the most missed ticks sent on a resume.
    """

    store: InstrumentReader
    feed: Feed
    max_instruments: int = MAX_INSTRUMENTS
    resume_cap: int = RESUME_CAP

    def subscriptions(
        self, output: Output, reply: Callable[[dict[str, Any]], None]
    ) -> MarketSubscriptions:
        """The market data side of one new connection."""
        return MarketSubscriptions(self, output, reply)


@dataclass(eq=False)
class _Watch:
    """One instrument watched by one connection."""

    instrument: str
    live: bool = False
    seen: tuple[int, int] = (0, 0)
    seen_id: str = "0-0"
    # The latest tick held back while the output is paused, and its flags.
    pending: Tick | None = None
    pending_snapshot: bool = False
    pending_conflated: bool = False


class MarketSubscriptions:
    """The instruments one connection watches (a :class:`TickWatcher`).

    :param market: the store, the feed and the limits.
    :param output: where ticks are written; paces them.
    :param reply: sends an answer frame (``subscribed``, ``error``...).
    """

    log = Logger()

    def __init__(
        self,
        market: MarketData,
        output: Output,
        reply: Callable[[dict[str, Any]], None],
    ):
        self._market = market
        self._output = output
        self._reply = reply
        self.closed = False
        self._watches: dict[str, _Watch] = {}
        # Instruments with a held-back tick, in the order they got it.
        self._waiting: dict[str, _Watch] = {}
        # Frames waiting for an earlier one about the same instrument.
        self._queues: dict[str, deque[SubscriptionFrame]] = {}
        self._queued = 0
        output.on_resume(self.flush)

    @property
    def instruments(self) -> list[str]:
        """The instruments subscribed to (or being subscribed to)."""
        return list(self._watches)

    def on_frame(self, frame: SubscriptionFrame) -> None:
        """Handle a ``subscribe`` or ``unsubscribe`` that names an instrument."""
        instrument = frame.instrument
        if self.closed or instrument is None:
            return
        queue = self._queues.get(instrument)
        if queue is None:
            self._queues[instrument] = deque()
            self._run(instrument, frame)
            return
        if self._queued >= MAX_QUEUED_FRAMES:
            self._output.close(
                wire.CLOSE_TRY_LATER, "too many subscription frames in flight"
            )
            return
        queue.append(frame)
        self._queued += 1

    def on_ticks(self, instrument: str, ticks: Sequence[Tick]) -> None:
        """New ticks from the feed: send them, or hold back the latest."""
        watch = self._watches.get(instrument)
        if watch is None or not watch.live:
            return
        for tick in ticks:
            if tick.key > watch.seen:
                self._offer(watch, tick, snapshot=False, conflated=False)

    def flush(self) -> None:
        """Write the held-back ticks, while the output stays writable."""
        while self._waiting and self._output.writable:
            instrument = next(iter(self._waiting))
            watch = self._waiting.pop(instrument)
            tick, watch.pending = watch.pending, None
            if tick is not None:
                self._output.send_frame(
                    tick.frame(watch.pending_snapshot, watch.pending_conflated)
                )
                metrics.market_sent(watch.pending_snapshot)

    def close(self) -> None:
        """The connection is gone: stop watching everything."""
        if self.closed:
            return
        self.closed = True
        for instrument, watch in self._watches.items():
            if watch.live:
                self._market.feed.unwatch(instrument, self)
        self._watches.clear()
        self._waiting.clear()
        self._queues.clear()

    # Frames, one instrument at a time

    def _run(self, instrument: str, frame: SubscriptionFrame) -> None:
        # A loop, not recursion: many frames may be handled at once.
        while not self.closed:
            d = self._handle(frame)
            if not d.called:
                d.addBoth(self._handled, instrument)
                return
            queue = self._queues.get(instrument)
            if not queue:
                self._queues.pop(instrument, None)
                return
            frame = queue.popleft()
            self._queued -= 1

    def _handled(self, result: Any, instrument: str) -> None:
        queue = self._queues.get(instrument)
        if not queue:
            self._queues.pop(instrument, None)
            return
        self._queued -= 1
        self._run(instrument, queue.popleft())

    def _handle(self, frame: SubscriptionFrame) -> Deferred[Any]:
        if isinstance(frame, wire.Subscribe):
            d = self._subscribe(frame)
        else:
            self._unsubscribe(frame)
            d = succeed(None)
        return d.addErrback(self._failed, frame)

    def _failed(self, reason: Failure, frame: SubscriptionFrame) -> None:
        self.log.failure(
            "Market frame for {instrument} failed", reason, instrument=frame.instrument
        )

    @inlineCallbacks
    def _subscribe(self, frame: wire.Subscribe) -> Any:
        instrument = frame.instrument
        assert instrument is not None
        if instrument in self._watches:
            # Already watched: answered again, and nothing else changes.
            self._answer("subscribed", frame)
            return
        limit = self._market.max_instruments
        if len(self._watches) >= limit:
            self._reply(
                wire.error_frame(
                    "too_many_subscriptions",
                    f"at most {limit} instruments per connection",
                    frame.id,
                )
            )
            return
        watch = self._watches[instrument] = _Watch(instrument)

        store = self._market.store
        try:
            if frame.after is None:
                latest = yield store.latest(instrument)
                first = [latest] if latest is not None else []
                contiguous = False
            else:
                first, contiguous = yield store.tail(
                    instrument, frame.after, self._market.resume_cap
                )
        except RedisUnavailable:
            self._forget(watch)
            self._reply(
                wire.error_frame("unavailable", "market data unreachable", frame.id)
            )
            return
        except Exception:
            self._forget(watch)
            self.log.failure("Subscribe to {instrument} failed", instrument=instrument)
            self._reply(wire.error_frame("internal", "subscribe failed", frame.id))
            return
        if self.closed:
            return

        self._answer("subscribed", frame)
        if frame.after is not None:
            watch.seen, watch.seen_id = wire.stream_id_key(frame.after), frame.after
        if contiguous:
            for tick in first:
                self._offer(watch, tick, snapshot=False, conflated=False)
        elif first:
            # A snapshot; after a resume that missed too much, the latest alone.
            self._offer(
                watch, first[-1], snapshot=True, conflated=frame.after is not None
            )
        watch.live = True
        self._market.feed.watch(instrument, self, watch.seen_id)

    def _unsubscribe(self, frame: wire.Unsubscribe) -> None:
        instrument = frame.instrument
        assert instrument is not None
        watch = self._watches.pop(instrument, None)
        if watch is None:
            self._reply(
                wire.error_frame(
                    "not_subscribed", f"not subscribed to {instrument}", frame.id
                )
            )
            return
        self._waiting.pop(instrument, None)
        if watch.live:
            self._market.feed.unwatch(instrument, self)
        self._answer("unsubscribed", frame)

    def _forget(self, watch: _Watch) -> None:
        if self._watches.get(watch.instrument) is watch:
            del self._watches[watch.instrument]

    def _answer(self, kind: str, frame: SubscriptionFrame) -> None:
        answer: dict[str, Any] = {"type": kind, "instrument": frame.instrument}
        if frame.id is not None:
            answer["id"] = frame.id
        self._reply(answer)

    # Ticks

    def _offer(
        self, watch: _Watch, tick: Tick, snapshot: bool, conflated: bool
    ) -> None:
        watch.seen, watch.seen_id = tick.key, tick.id
        if watch.pending is not None:
            # Conflation: the held-back tick is replaced, and so skipped.
            snapshot = snapshot or watch.pending_snapshot
            conflated = True
        elif self._output.writable:
            self._output.send_frame(tick.frame(snapshot, conflated))
            metrics.market_sent(snapshot)
            return
        watch.pending = tick
        watch.pending_snapshot, watch.pending_conflated = snapshot, conflated
        self._waiting.setdefault(watch.instrument, watch)
        self.flush()
