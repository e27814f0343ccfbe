"""Each user's inbox: the truth about what they must receive (invariant 1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, inlineCallbacks

from wsha import keys
from wsha.lua import load
from wsha.services.redis_service import RedisUnavailable


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


@dataclass(frozen=True)
class Durability:
    """How many replicas must hold a message before it is acknowledged or delivered.

    Redis replicates asynchronously: a master that fails over (or is demoted
    by Sentinel while clients still write to it) loses what its replica had
    not received. With ``replicas`` set, an append is acknowledged, and an
    entry delivered, only once that many replicas confirmed it (``WAIT``);
    otherwise the client gets a retryable error and sends again, and the
    delivery pump reads again, on whichever server is then the master.

    :param replicas: replicas that must confirm; 0 trusts the master alone.
    :param wait_ms: how long to wait for them before giving up (retryably).
    """

    replicas: int = 0
    wait_ms: int = 500


class InboxStore:
    """Appends to and reads from users' inboxes (Redis Streams).

    :param redis: a connected txredisapi connection or pool.
    :param limits: length and lifetime bounds of every inbox.
    :param durability: replicas that must confirm a message before it counts.
    """

    _append_script = load("append")

    def __init__(
        self,
        redis: RedisCommands,
        limits: InboxLimits,
        durability: Durability = Durability(),
    ):
        self._redis = redis
        self.limits = limits
        self.durability = durability

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
        yield confirm_replicated(self._redis, self.durability)
        return AppendResult(str(entry_id), bool(int(duplicate)), frozenset(nodes or ()))

    @inlineCallbacks
    def read_after(self, user: str, after: str, count: int) -> Any:
        """Fire with up to ``count`` entries strictly after inbox id ``after``."""
        reply = yield self._redis.execute_command(
            "XRANGE", keys.inbox(user), "(" + after, "+", "COUNT", count
        )
        if reply:
            # Never deliver what a failover could still take back.
            yield confirm_replicated(self._redis, self.durability)
        return [parse_entry(raw) for raw in reply or ()]


@inlineCallbacks
def confirm_replicated(redis: RedisCommands, durability: Durability) -> Any:
    """Fail with RedisUnavailable unless ``durability.replicas`` confirm in time.

    ``WAIT`` covers every write the connection made before it, which includes
    the entries just appended or read.
    """
    wanted = durability.replicas
    if wanted <= 0:
        return
    confirmed = yield redis.execute_command("WAIT", wanted, durability.wait_ms)
    if int(confirmed) < wanted:
        raise RedisUnavailable(
            f"{confirmed} of {wanted} replicas confirmed within {durability.wait_ms} ms"
        )


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
