"""Fakes of the broadcast store and helpers for the broadcast unit tests."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed

from wsha.broadcast.entry import EVERYONE, Audience, BroadcastEntry
from wsha.broadcast.store import HistoryHead
from wsha.services.redis_service import RedisUnavailable


def bentry(
    entry_id: str, audience: Audience | None = EVERYONE, body: Any = None
) -> BroadcastEntry:
    """A history entry with id ``entry_id``; its body defaults to the id."""
    return BroadcastEntry(
        entry_id, "ops", json.dumps(entry_id if body is None else body), 5, audience
    )


class FakeHistory:
    """A BroadcastStore: reads wait for the test; heads, cursors and acks answer
    at once (or fail while ``down``)."""

    def __init__(self, last: str = "0-0", trimmed: str = "0-0") -> None:
        self.reads: list[tuple[tuple[str, int], Deferred[Any]]] = []
        self.head_value = HistoryHead(last, trimmed)
        self.cursors: dict[tuple[str, str], str] = {}
        self.cursor_calls: list[tuple[str, str, str, str]] = []
        self.acks: list[tuple[str, str, str, str]] = []
        self.down = False

    def read_after(self, after: str, count: int) -> Deferred[Any]:
        """Record a read; the test fires it with a list of entries."""
        d: Deferred[Any] = Deferred()
        self.reads.append(((after, count), d))
        return d

    def answer(self, *entries: BroadcastEntry) -> None:
        """Fire the most recent read with ``entries``."""
        self.reads[-1][1].callback(list(entries))

    def head(self) -> Deferred[Any]:
        """The head set by the test."""
        if self.down:
            return fail(RedisUnavailable("Redis is down"))
        return succeed(self.head_value)

    def resume_point(
        self, user: str, session: str, epoch: str, default: str
    ) -> Deferred[Any]:
        """Follow broadcast_cursor.lua: the stored cursor, else store ``default``."""
        if self.down:
            return fail(RedisUnavailable("Redis is down"))
        self.cursor_calls.append((user, session, epoch, default))
        return succeed(self.cursors.setdefault((user, session), default))

    def acknowledge(
        self, user: str, session: str, epoch: str, upto: str
    ) -> Deferred[Any]:
        """Record an ack; it succeeds at once (or fails while ``down``)."""
        self.acks.append((user, session, epoch, upto))
        if self.down:
            return fail(RedisUnavailable("Redis is down"))
        return succeed(True)


class RecordingSession:
    """Stands in for a SessionBroadcasts registered with a feed."""

    def __init__(self, user: str = "alice", session: str = "phone") -> None:
        self.user = user
        self.session = session
        self.offered: list[tuple[str, bytes]] = []

    def offer(self, entry: BroadcastEntry, frame: bytes) -> None:
        """Keep the entry's id and the frame."""
        self.offered.append((entry.id, frame))

    @property
    def ids(self) -> list[str]:
        """The ids offered, in order."""
        return [entry_id for entry_id, _ in self.offered]
