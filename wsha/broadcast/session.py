"""SessionBroadcasts: moves the broadcast history to one connection, in order.

A session first catches up: it reads the history after its cursor, one read
at a time, strictly after the last id it passed. Once a read comes back short
with nothing new announced meanwhile, it is live and takes each entry its
node's feed hands over, skipping any not above the last id it passed. Replay
and live traffic are therefore never interleaved out of order, and no
broadcast is sent twice on one connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from wsha import metrics, wire
from wsha.broadcast.entry import ALL, NODE, TAG, BroadcastEntry
from wsha.delivery_latency import DeliveryLedger
from wsha.services.redis_service import RedisUnavailable

SendFrame = Callable[[bytes], None]


class HistoryReader(Protocol):
    """What a session needs from the broadcast store."""

    def read_after(self, after: str, count: int) -> Deferred[Any]:
        """Fire with up to ``count`` entries strictly after ``after``."""

    def acknowledge(
        self, user: str, session: str, epoch: str, upto: str
    ) -> Deferred[Any]:
        """Advance the session's broadcast cursor (fenced by ``epoch``)."""


class Registry(Protocol):
    """Where a session registers to be offered live broadcasts (the node's feed)."""

    def register(self, session: SessionBroadcasts) -> None:
        """Offer ``session`` every broadcast from now on."""

    def unregister(self, session: SessionBroadcasts) -> None:
        """Stop offering ``session`` broadcasts."""


def newer(a: str, b: str) -> bool:
    """Say whether history id ``a`` comes after ``b``."""
    return wire.stream_id_key(a) > wire.stream_id_key(b)


class SessionBroadcasts:
    """The broadcasts of one connection: catch-up from a cursor, then live.

    :param store: the broadcast history, and where acks are recorded.
    :param feed: the node's feed, which offers live broadcasts.
    :param send: writes one encoded ``broadcast`` frame to the connection.
    :param user: the session's user.
    :param session: the session id.
    :param epoch: the connection's fencing epoch.
    :param tags: the tags the user's token carries.
    :param node_id: the node the connection is on.
    :param after: the history id replay starts after.
    :param joined_at: the newest history id when the connection opened; only
        node broadcasts above it reach the session (they are not replayed).
    :param truncated: broadcasts after ``after`` were trimmed from the history.
    :param clock: schedules the retry after a failed read.
    :param batch_size: the most entries read per round trip.
    :param retry_delay: seconds to wait before retrying a failed read.
    """

    log = Logger()

    def __init__(
        self,
        store: HistoryReader,
        feed: Registry,
        send: SendFrame,
        user: str,
        session: str,
        epoch: str,
        tags: frozenset[str],
        node_id: str,
        after: str,
        joined_at: str,
        truncated: bool,
        clock: IReactorTime,
        batch_size: int = 256,
        retry_delay: float = 1.0,
    ):
        self._store = store
        self._feed = feed
        self._send = send
        self.user = user
        self.session = session
        self.epoch = epoch
        self.tags = tags
        self.node_id = node_id
        self.after = after
        self.last_sent = after
        self.joined_at = joined_at
        self.truncated = truncated
        self._clock = clock
        self._batch_size = batch_size
        self._retry_delay = retry_delay
        self.live = False
        self._busy = False
        self._again = False
        self._stopped = False
        self._retry: IDelayedCall | None = None
        # Times what is sent up to the client's ack (set by the connection).
        self.ledger: DeliveryLedger | None = None

    def welcome_fields(self) -> dict[str, Any]:
        """The fields this adds to the session's ``welcome`` frame."""
        return {"broadcast_after": self.after, "broadcast_truncated": self.truncated}

    def start(self) -> None:
        """Register with the feed, then catch up from the cursor."""
        self._feed.register(self)
        self._pull()

    def stop(self) -> None:
        """Stop for good: no more reads, no more frames."""
        self._stopped = True
        self._feed.unregister(self)
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    def reaches(self, entry: BroadcastEntry) -> bool:
        """Say whether ``entry``'s audience includes this session."""
        audience = entry.audience
        if audience is None:
            return False
        if audience.kind == ALL:
            return True
        if audience.kind == TAG:
            return audience.value in self.tags
        return (
            audience.kind == NODE
            and audience.value == self.node_id
            and newer(entry.id, self.joined_at)
        )

    def offer(self, entry: BroadcastEntry, frame: bytes) -> None:
        """Take a live broadcast from the feed (entries come in history order).

        While catching up the entry is left to the reads (it is in the
        history), which go on until they find nothing newer.
        """
        if self._stopped:
            return
        if not self.live:
            self._again = True
            return
        if not newer(entry.id, self.last_sent):
            return
        self.last_sent = entry.id
        if self.reaches(entry):
            self._send(frame)
            self._sent(entry, metrics.ROUTE_KAFKA)

    def acknowledge(self, upto: str) -> dict[str, Any] | None:
        """Record the client's broadcast ack; returns an error frame to send, if any.

        ``upto`` must not be beyond what this connection passed: a cursor
        past it would make a device that lost its own position skip
        broadcasts.
        """
        if newer(upto, self.last_sent):
            return wire.error_frame(
                "bad_frame", "ack beyond the last broadcast delivered"
            )
        d = self._store.acknowledge(self.user, self.session, self.epoch, upto)
        d.addErrback(self._ack_failed)
        return None

    def _ack_failed(self, reason: Any) -> None:
        # The next ack carries the position forward; an outage is logged once.
        emit = self.log.debug if reason.check(RedisUnavailable) else self.log.warn
        emit(
            "Broadcast ack of {user}/{session} failed: {error}",
            user=self.user,
            session=self.session,
            error=reason.getErrorMessage(),
        )

    @inlineCallbacks
    def _pull(self) -> Any:
        self._busy = True
        try:
            while not self._stopped:
                self._again = False
                entries = yield self._store.read_after(self.last_sent, self._batch_size)
                if self._stopped:
                    return
                self._pass(entries)
                if len(entries) < self._batch_size and not self._again:
                    self.live = True
                    return
        except Exception as e:
            emit = self.log.debug if isinstance(e, RedisUnavailable) else self.log.warn
            emit(
                "Broadcast read for {user}/{session} failed, retrying: {error}",
                user=self.user,
                session=self.session,
                error=str(e),
            )
            if not self._stopped:
                self._retry = self._clock.callLater(self._retry_delay, self._retry_pull)
        finally:
            self._busy = False

    def _pass(self, entries: list[BroadcastEntry]) -> None:
        # Entries read from the history: each one's frame is encoded here,
        # once per session; live ones come encoded once per node.
        for entry in entries:
            if not newer(entry.id, self.last_sent):
                continue
            self.last_sent = entry.id
            if self.reaches(entry):
                self._send(
                    wire.encode_broadcast(
                        entry.id, entry.sender, entry.body_json, entry.ts
                    )
                )
                self._sent(entry, metrics.ROUTE_HISTORY)

    def _sent(self, entry: BroadcastEntry, route: str) -> None:
        if self.ledger is not None:
            self.ledger.written(metrics.BROADCAST, "", entry.id, entry.ts, route)

    def _retry_pull(self) -> None:
        self._retry = None
        if not self._stopped and not self._busy:
            self._pull()
