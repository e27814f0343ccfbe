"""BroadcastFeed: one node's ordered view of the broadcast history.

Every node reads the whole broadcast topic. Each record names the history id
before its own; the feed applies a record at once only when that is exactly
the last id it applied. Anything else (a record lost or late, a node that
started while broadcasts were sent, a Kafka outage) makes it read the history
after its last id instead, so local sessions get every broadcast once, in
history order, whatever Kafka did.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.application import service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from wsha import topics, wire
from wsha.broadcast.entry import NODE, BroadcastEntry
from wsha.broadcast.session import SendFrame, SessionBroadcasts, newer
from wsha.broadcast.store import NOTHING
from wsha.services.redis_service import RedisUnavailable


class History(Protocol):
    """What the feed needs from the broadcast store."""

    def read_after(self, after: str, count: int) -> Deferred[Any]:
        """Fire with up to ``count`` entries strictly after ``after``."""

    def head(self) -> Deferred[Any]:
        """Fire with the history's :class:`~wsha.broadcast.store.HistoryHead`."""

    def resume_point(
        self, user: str, session: str, epoch: str, default: str
    ) -> Deferred[Any]:
        """Fire with the session's cursor, storing ``default`` if it has none."""

    def acknowledge(
        self, user: str, session: str, epoch: str, upto: str
    ) -> Deferred[Any]:
        """Advance the session's broadcast cursor (fenced by ``epoch``)."""


class BroadcastFeed(service.Service):
    """Applies the broadcast history in order and hands it to local sessions.

    :param store: the broadcast history.
    :param node_id: this node's id (for ``node`` audiences).
    :param clock: schedules retries after failed reads.
    :param batch_size: the most entries read per round trip.
    :param retry_delay: seconds to wait before retrying a failed read.

    ``last`` is the newest history id applied: every entry up to it has been
    offered to the sessions registered at the time.
    """

    log = Logger()

    def __init__(
        self,
        store: History,
        node_id: str,
        clock: IReactorTime,
        batch_size: int = 256,
        retry_delay: float = 1.0,
    ):
        self._store = store
        self.node_id = node_id
        self._clock = clock
        self._batch_size = batch_size
        self._retry_delay = retry_delay
        self.last = NOTHING
        self._sessions: set[SessionBroadcasts] = set()
        self._busy = False
        self._again = False
        self._retry: IDelayedCall | None = None

    @inlineCallbacks
    def startService(self) -> Any:
        """Start at the current end of the history: a node replays nothing.

        Sessions catch up from their own cursors. If the end cannot be read,
        the feed starts before the whole history; sessions skip what they
        passed, so that costs one long read, never a duplicate.
        """
        service.Service.startService(self)
        try:
            head = yield self._store.head()
        except Exception as e:
            self.log.warn(
                "Broadcast history end unknown, reading it all later: {error}",
                error=str(e),
            )
            return
        self.last = head.last
        self.log.info("Broadcasts start after {id}", id=self.last)

    def stopService(self) -> None:
        """Stop reading the history."""
        service.Service.stopService(self)
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    # Sessions

    @inlineCallbacks
    def open(
        self,
        user: str,
        session: str,
        epoch: str,
        tags: frozenset[str],
        after: str | None,
        send: SendFrame,
    ) -> Any:
        """Fire with the (not yet started) broadcasts of a newly claimed session.

        It resumes after ``after`` if the client gave one, else after the
        session's stored cursor; a session without one starts at the current
        end of the history, which becomes its cursor.
        """
        head = yield self._store.head()
        cursor = yield self._store.resume_point(
            user, session, epoch, after or head.last
        )
        start = after or cursor
        return SessionBroadcasts(
            self._store,
            self,
            send,
            user,
            session,
            epoch,
            tags,
            self.node_id,
            start,
            head.last,
            newer(head.trimmed, start),
            self._clock,
            self._batch_size,
            self._retry_delay,
        )

    def register(self, session: SessionBroadcasts) -> None:
        """Offer ``session`` every broadcast applied from now on."""
        self._sessions.add(session)

    def unregister(self, session: SessionBroadcasts) -> None:
        """Stop offering ``session`` broadcasts."""
        self._sessions.discard(session)

    @property
    def session_count(self) -> int:
        """How many sessions the feed offers broadcasts to."""
        return len(self._sessions)

    # Records and the history

    def on_record(self, raw: bytes) -> None:
        """Act on a record read from the broadcast topic."""
        try:
            entry, prev = topics.decode_broadcast_record(raw)
        except ValueError as e:
            self.log.warn("Ignoring a broadcast record: {error}", error=str(e))
            return
        self.offer(entry, prev)

    def offer(self, entry: BroadcastEntry, prev: str) -> None:
        """Apply ``entry`` if it follows the last one applied; else read the gap.

        :param prev: the history id before ``entry``'s.
        """
        if not newer(entry.id, self.last):
            return
        if prev == self.last and not self._busy and self._retry is None:
            self._apply(entry)
            return
        self.catch_up()

    def catch_up(self) -> None:
        """Read the history after the last id applied and apply what is there.

        Called for a gap, on the sweeper's timer (often while Kafka is
        unreachable) and when Redis comes back; one read runs at a time.
        """
        if not self.running:
            return
        if self._busy or self._retry is not None:
            self._again = True
            return
        self._read()

    @inlineCallbacks
    def _read(self) -> Any:
        self._busy = True
        try:
            while self.running:
                self._again = False
                entries = yield self._store.read_after(self.last, self._batch_size)
                for entry in entries:
                    if newer(entry.id, self.last):
                        self._apply(entry)
                if len(entries) < self._batch_size and not self._again:
                    return
        except Exception as e:
            emit = self.log.debug if isinstance(e, RedisUnavailable) else self.log.warn
            emit("Broadcast history read failed, retrying: {error}", error=str(e))
            if self.running:
                self._retry = self._clock.callLater(self._retry_delay, self._retry_read)
        finally:
            self._busy = False

    def _retry_read(self) -> None:
        self._retry = None
        self.catch_up()

    def _apply(self, entry: BroadcastEntry) -> None:
        self.last = entry.id
        audience = entry.audience
        if audience is None or (
            audience.kind == NODE and audience.value != self.node_id
        ):
            return
        # Encoded once per node, not once per session.
        frame = wire.encode_broadcast(entry.id, entry.sender, entry.body_json, entry.ts)
        for session in list(self._sessions):
            try:
                session.offer(entry, frame)
            except Exception:
                self.log.failure(
                    "Offering broadcast {id} to {user}/{session} failed",
                    id=entry.id,
                    user=session.user,
                    session=session.session,
                )
