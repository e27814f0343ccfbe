"""Each user's inbox: the truth about what they must receive (invariant 1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, inlineCallbacks

from wsha import keys
from wsha.lua import load


class RedisCommands(Protocol):
    """The part of a txredisapi connection that wsha's stores use."""

    def eval(
        self, script: str, keys: list[str] = ..., args: list[Any] = ...
    ) -> Deferred[Any]:
        """Run a Lua script (cached by its hash)."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """Run any Redis command."""


@dataclass(frozen=True)
class InboxEntry:
    """One stored message: its inbox id, sender, JSON body and acceptance time."""

    id: str
    sender: str
    body_json: str
    ts: int
    client_id: str


@dataclass(frozen=True)
class AppendResult:
    """What appending did: the inbox id, whether it was a retry, who to notify."""

    id: str
    duplicate: bool
    nodes: frozenset[str]


@dataclass(frozen=True)
class InboxLimits:
    """How much an inbox keeps, and for how long."""

    max_length: int = 10_000
    ttl_seconds: int = 7 * 24 * 3600
    dedupe_ttl_seconds: int = 24 * 3600


class InboxStore:
    """Appends to and reads from users' inboxes (Redis Streams).

    :param redis: a connected txredisapi connection or pool.
    :param limits: length and lifetime bounds of every inbox.
    """

    _append_script = load("append")

    def __init__(self, redis: RedisCommands, limits: InboxLimits):
        self._redis = redis
        self.limits = limits

    @inlineCallbacks
    def append(
        self, user: str, sender: str, client_id: str, body_json: str, ts: int
    ) -> Any:
        """Store a message once per (sender, client id); fires :class:`AppendResult`."""
        limits = self.limits
        reply = yield self._redis.eval(
            self._append_script,
            [
                keys.inbox(user),
                keys.dedupe(user, sender, client_id),
                keys.online(user),
                keys.trimmed(user),
            ],
            [
                sender,
                body_json,
                limits.max_length,
                limits.ttl_seconds,
                limits.dedupe_ttl_seconds,
                ts,
                client_id,
            ],
        )
        entry_id, duplicate, nodes = reply
        return AppendResult(str(entry_id), bool(int(duplicate)), frozenset(nodes or ()))

    @inlineCallbacks
    def read_after(self, user: str, after: str, count: int) -> Any:
        """Fire with up to ``count`` entries strictly after inbox id ``after``."""
        reply = yield self._redis.execute_command(
            "XRANGE", keys.inbox(user), "(" + after, "+", "COUNT", count
        )
        return [parse_entry(raw) for raw in reply or ()]


def parse_entry(raw: list[Any]) -> InboxEntry:
    """Turn one raw XRANGE reply item into an :class:`InboxEntry`."""
    entry_id, flat = raw
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    return InboxEntry(
        id=str(entry_id),
        sender=str(fields.get("f", "")),
        body_json=str(fields.get("b", "null")),
        ts=int(fields.get("t", 0)),
        client_id=str(fields.get("c", "")),
    )
