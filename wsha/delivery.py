"""SessionDelivery: moves one session's stream entries to its connection, in order.

The stream is the user's inbox, or the history of one of the session's
groups. There is one pull at a time per session and stream, always reading
strictly after the last id sent, so replay and live traffic are the same code
path: they cannot interleave out of order, skip an entry or send one twice
(invariant 2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from wsha.inbox import InboxEntry
from wsha.metrics import ROUTE_HISTORY, ROUTE_PUBSUB, ROUTE_REPLAY
from wsha.services.redis_service import RedisUnavailable
from wsha.wire import stream_id_key

Deliver = Callable[[list[InboxEntry]], int | None]
"""Writes entries in order; returns how many it wrote (None: all of them)."""


class EntrySource(Protocol):
    """Where entries are read from: the inboxes, or the group histories."""

    def read_after(self, stream: str, after: str, count: int) -> Deferred[Any]:
        """Fire with up to ``count`` entries of ``stream`` strictly after ``after``."""


class SessionDelivery:
    """Pulls a stream after ``after`` whenever it is poked.

    :param inbox: where entries are read from.
    :param user: which stream: a user (of the inboxes) or a group (of histories).
    :param after: the id the session has already seen.
    :param deliver: called with each non-empty batch, in inbox order; it may
        write only the first entries (the connection backed up): the rest are
        read again at the next poke.
    :param clock: schedules the retry after a failed read.
    :param batch_size: the most entries read per round trip.
    :param retry_delay: seconds to wait before retrying a failed read.
    :param writable: says whether the connection takes more now; while it does
        not, nothing is read, and the owner pokes once it does again.
    :param route: how the first pull's entries reach the session (a metrics
        label, see docs/metrics.md); each poke may name the next one.
    """

    log = Logger()

    def __init__(
        self,
        inbox: EntrySource,
        user: str,
        after: str,
        deliver: Deliver,
        clock: IReactorTime,
        batch_size: int = 256,
        retry_delay: float = 1.0,
        writable: Callable[[], bool] = lambda: True,
        route: str = ROUTE_REPLAY,
    ):
        self._inbox = inbox
        self._user = user
        self.last_sent = after
        self._deliver = deliver
        self._clock = clock
        self._batch_size = batch_size
        self._retry_delay = retry_delay
        self._busy = False
        self._again = False
        self._stopped = False
        self._retry: IDelayedCall | None = None
        self._writable = writable
        # Set when a pull stopped because the connection backed up: the
        # owner pokes again once it drains.
        self.held = False
        # What made the running pull read (the delivered entries' route).
        self.route = route
        self._next_route = route

    def poke(self, route: str | None = None) -> None:
        """Say the inbox may have grown; pulls now, or again after the pull running.

        :param route: what says so (a Kafka notice, a sweep...); None keeps
            the route of the last pull.
        """
        if self._stopped:
            return
        if self._busy:
            if not self._again:
                self._next_route = route or self.route
            self._again = True
            return
        self.route = route or self.route
        self._busy = True
        self._pull()

    def offer(self, entry: InboxEntry, previous: str) -> None:
        """Deliver a live ``entry`` whose stream predecessor is ``previous``.

        It goes out at once when it is the next one this session needs; when
        the session is behind (a gap) or a pull is running, the stream is
        pulled instead, so nothing is skipped, doubled or reordered.
        """
        if self._stopped:
            return
        last = stream_id_key(self.last_sent)
        if stream_id_key(entry.id) <= last:
            return
        if self._busy or stream_id_key(previous) > last:
            self.poke(ROUTE_HISTORY)
            return
        if not self._writable():
            # Read again from the stream once the connection drains.
            self.held = True
            return
        before, self.last_sent = self.last_sent, entry.id
        self.route = ROUTE_PUBSUB
        written = self._deliver([entry])
        if written is not None and written < 1:
            self.last_sent = before
            self.held = True

    def stop(self) -> None:
        """Stop for good: no more reads, no more deliveries."""
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    @inlineCallbacks
    def _pull(self) -> Any:
        try:
            while not self._stopped:
                if not self._writable():
                    self.held = True
                    return
                if self._again:
                    self.route = self._next_route
                self.held = self._again = False
                entries = yield self._inbox.read_after(
                    self._user, self.last_sent, self._batch_size
                )
                if self._stopped:
                    return
                if entries:
                    # Moved first: a deliver that raises never resends its batch.
                    before, self.last_sent = self.last_sent, entries[-1].id
                    written = self._deliver(entries)
                    if written is not None and written < len(entries):
                        # The rest is read again once the connection drains.
                        self.last_sent = entries[written - 1].id if written else before
                        self.held = True
                        return
                if len(entries) < self._batch_size and not self._again:
                    return
        except Exception as e:
            # An outage is logged once by the Redis service, not once per session.
            emit = self.log.debug if isinstance(e, RedisUnavailable) else self.log.warn
            emit(
                "Inbox read for {user} failed, retrying: {error}",
                user=self._user,
                error=str(e),
            )
            if not self._stopped:
                self._retry = self._clock.callLater(self._retry_delay, self._retry_pull)
        finally:
            self._busy = False

    def _retry_pull(self) -> None:
        self._retry = None
        self.poke()
