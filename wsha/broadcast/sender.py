"""Broadcaster: stores a system broadcast, then announces it to every node."""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime

from wsha import topics
from wsha.broadcast.entry import Audience, BroadcastEntry
from wsha.broadcast.store import Stored


class BroadcastHistory(Protocol):
    """What the broadcaster needs from the broadcast store."""

    def append(
        self,
        sender: str,
        client_id: str,
        body_json: str,
        audience: Audience,
        ts: int,
    ) -> Deferred[Any]:
        """Store a broadcast once per (sender, client id); fires ``Stored``."""


class BroadcastPublisher(Protocol):
    """What the broadcaster needs from the Kafka bus."""

    def publish_broadcast(self, record: bytes) -> None:
        """Queue ``record`` for the broadcast topic; never blocks."""


class LocalFeed(Protocol):
    """What the broadcaster needs from this node's feed."""

    def offer(self, entry: BroadcastEntry, prev: str) -> None:
        """Apply ``entry`` (which follows ``prev``) to the local sessions."""


class Broadcaster:
    """Sends system broadcasts: history first, then the Kafka record.

    The local sessions get the broadcast straight from this node's feed; the
    other nodes from the record, or from the history if the record is lost.

    :param store: the broadcast history.
    :param bus: publishes records on the broadcast topic.
    :param feed: this node's feed.
    :param clock: stamps each broadcast's acceptance time.
    """

    def __init__(
        self,
        store: BroadcastHistory,
        bus: BroadcastPublisher,
        feed: LocalFeed,
        clock: IReactorTime,
    ):
        self._store = store
        self._bus = bus
        self._feed = feed
        self._clock = clock

    @inlineCallbacks
    def send(
        self, sender: str, client_id: str, body_json: str, audience: Audience
    ) -> Any:
        """Store a broadcast once per (sender, client id) and announce it.

        Fires with :class:`~wsha.broadcast.store.Stored`. A retry of one
        already stored is announced again (the first announcement may be what
        failed); nodes that had it ignore the repeat.
        """
        ts = int(self._clock.seconds() * 1000)
        stored: Stored = yield self._store.append(
            sender, client_id, body_json, audience, ts
        )
        if stored.entry is not None:
            self._bus.publish_broadcast(
                topics.encode_broadcast_record(stored.entry, stored.prev)
            )
            self._feed.offer(stored.entry, stored.prev)
        return stored
