"""DeliveryLedger: times each message of one connection up to the client's ack.

Well-known gateways stop the clock when a message is written to the socket.
wsha stops it when the client says it has the message: every message written
to a connection is noted with its acceptance time, and when the client
acknowledges ``upto`` an id, every noted message of that stream up to it is
timed (``wsha_delivery_ack_seconds``). The write is timed too
(``wsha_delivery_write_seconds``), for comparison.

The record is bounded per connection, whatever the number of its groups:
past ``max_tracked`` unacknowledged messages the oldest of the stream written
to is dropped and counted instead, so a client that never acks costs a fixed
amount of memory (about 40 KB at most).
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from twisted.internet.interfaces import IReactorTime

from wsha import metrics
from wsha.wire import stream_id_key

MAX_TRACKED = 256
"""Unacknowledged messages remembered per connection (a client acks every 50 ms)."""

ACKED_CLASSES = frozenset({metrics.DIRECT, metrics.GROUP, metrics.BROADCAST})
"""The message classes whose clients acknowledge what they received."""


def accepted_at(entry_id: str, ts_ms: int) -> float:
    """When a stream entry was accepted, in seconds since the epoch.

    The entry's own ``ts`` (the accepting node's clock) is used; an entry
    without one falls back on the milliseconds of its Redis stream id.
    """
    if ts_ms > 0:
        return ts_ms / 1000.0
    return stream_id_key(entry_id)[0] / 1000.0


class _Sent(NamedTuple):
    key: tuple[int, int]
    accepted: float
    when: str


class DeliveryLedger:
    """The messages one connection was sent and has not acknowledged yet.

    :param clock: the time source (the reactor); it also dates the
        connection's opening, which splits ``live`` from ``backlog`` messages.
    :param max_tracked: unacknowledged messages remembered, over all streams.
    """

    def __init__(self, clock: IReactorTime, max_tracked: int = MAX_TRACKED):
        self._clock = clock
        self.opened_at = clock.seconds()
        self.max_tracked = max_tracked
        self.tracked = 0
        self._streams: dict[tuple[str, str], deque[_Sent]] = {}

    def written(
        self, kind: str, stream: str, entry_id: str, ts_ms: int, route: str
    ) -> None:
        """Note that entry ``entry_id`` of ``kind``'s ``stream`` was written.

        :param kind: the message class (``direct``, ``group``...).
        :param stream: which stream of that class (the group; "" for the
            inbox and the broadcasts, of which a connection has one each).
        :param ts_ms: the entry's acceptance time in ms (0: unknown).
        :param route: how it got here (``wsha_messages_out_total``'s route).
        """
        accepted = accepted_at(entry_id, ts_ms)
        when = metrics.LIVE if accepted >= self.opened_at else metrics.BACKLOG
        metrics.MESSAGES_OUT.labels(kind, route).inc()
        now = self._clock.seconds()
        metrics.DELIVERY_WRITE.labels(kind, when).observe(max(0.0, now - accepted))
        if kind not in ACKED_CLASSES:
            return
        sent = self._streams.get((kind, stream))
        if sent is None:
            sent = self._streams[(kind, stream)] = deque()
        if self.tracked >= self.max_tracked:
            self._drop_oldest((kind, stream) if sent else None)
        sent.append(_Sent(stream_id_key(entry_id), accepted, when))
        self.tracked += 1

    def _drop_oldest(self, stream: tuple[str, str] | None) -> None:
        # From the stream written to, or else from the first one holding any.
        if stream is None:
            stream = next(s for s, sent in self._streams.items() if sent)
        self._streams[stream].popleft()
        self.tracked -= 1
        metrics.DELIVERY_UNTRACKED.labels(stream[0], "overflow").inc()

    def acknowledged(self, kind: str, stream: str, upto: str) -> int:
        """The client acked ``upto`` in ``stream``: time what it covers.

        Returns how many messages were timed. An ack naming nothing noted
        (sent on an earlier connection, or already acked) times nothing.
        """
        sent = self._streams.get((kind, stream))
        if not sent:
            return 0
        limit = stream_id_key(upto)
        now = self._clock.seconds()
        timed = 0
        while sent and sent[0].key <= limit:
            entry = sent.popleft()
            self.tracked -= 1
            delay = max(0.0, now - entry.accepted)
            metrics.DELIVERY_ACK.labels(kind, entry.when).observe(delay)
            timed += 1
        return timed

    def pending(self, kind: str, stream: str = "") -> int:
        """How many messages of ``stream`` wait for the client's ack."""
        return len(self._streams.get((kind, stream), ()))

    def forget(self, kind: str, stream: str) -> None:
        """Stop waiting for acks of ``stream`` (the client left the group)."""
        sent = self._streams.pop((kind, stream), None)
        if sent:
            self.tracked -= len(sent)
            metrics.DELIVERY_UNTRACKED.labels(kind, "closed").inc(len(sent))

    def close(self) -> None:
        """The connection ended: what was never acked is counted, not timed."""
        for kind, stream in list(self._streams):
            self.forget(kind, stream)
