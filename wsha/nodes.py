"""The node registry in Redis: registrations, heartbeats, dead-node cleanup steps.

Every key of one node shares the hash tag ``{n:<node>}``, so each step below
that needs atomicity is one script on one slot; the cluster-wide lists (known
nodes, topics due for deletion) share the tag ``{nodes}``. No script mixes
them, nor node keys with user keys. Documented in docs/redis.md.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from twisted.internet.defer import Deferred, FirstError, gatherResults, inlineCallbacks
from twisted.python.failure import Failure

from wsha import keys
from wsha.inbox import RedisCommands
from wsha.lua import load

STARTING = "starting"
READY = "ready"
DRAINING = "draining"
"""The states a node registers itself in."""

RENEWED = "ok"
FIRST = "new"
RESTORED = "restored"
REAPED = "reaped"
"""What a heartbeat found: see wsha/lua/heartbeat.lua."""

ALIVE = "alive"
DONE = "done"
BUSY = "busy"
LOCKED = "locked"
"""How beginning a cleanup went: see wsha/lua/cleanup_begin.lua."""

GONE = "gone"
BACK = "back"
LOST = "lost"
"""How finishing a cleanup went: see wsha/lua/cleanup_end.lua."""

CLEANUP_RECORD_TTL = 24 * 3600
"""Seconds the record of a dead node's cleanup is kept (and stops a second run)."""


@dataclass(frozen=True)
class NodeRecord:
    """What a node says about itself in its registration.

    :param id: the node id.
    :param url: the WebSocket URL clients reach it at.
    :param control_url: the base URL of its control API.
    :param version: its version label (``--version-label``; the wsha version
        it runs unless set otherwise).
    :param state: ``starting``, ``ready`` or ``draining``.
    :param connections: how many sessions are live on it.
    :param started_at: when it started, in ms since the epoch (its clock).
    :param heartbeat_at: when it wrote this record, in ms since the epoch.
    """

    id: str
    url: str
    control_url: str
    version: str
    state: str
    connections: int
    started_at: int
    heartbeat_at: int

    def to_json(self) -> str:
        """The record as stored in Redis."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> NodeRecord:
        """Parse a stored record; raises ValueError if it is not one."""
        try:
            fields = json.loads(raw)
            return cls(
                id=str(fields["id"]),
                url=str(fields.get("url", "")),
                control_url=str(fields.get("control_url", "")),
                version=str(fields.get("version", "")),
                state=str(fields.get("state", "")),
                connections=int(fields.get("connections", 0)),
                started_at=int(fields.get("started_at", 0)),
                heartbeat_at=int(fields.get("heartbeat_at", 0)),
            )
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise ValueError(f"not a node record: {raw!r}") from e


class NodeStore:
    """Reads and writes the node registry.

    :param redis: a connected txredisapi connection (or the node's RedisService).
    :param record_ttl: seconds a cleanup record is kept.
    """

    _heartbeat_script = load("heartbeat")
    _begin_script = load("cleanup_begin")
    _step_script = load("cleanup_step")
    _end_script = load("cleanup_end")

    def __init__(self, redis: RedisCommands, record_ttl: int = CLEANUP_RECORD_TTL):
        self._redis = redis
        self.record_ttl = record_ttl

    # Registration

    @inlineCallbacks
    def heartbeat(self, record: NodeRecord, ttl_ms: int, first: bool) -> Any:
        """Write ``record`` to expire in ``ttl_ms``; fires with what it found.

        The answer is :data:`RENEWED`, :data:`FIRST`, :data:`RESTORED` or
        :data:`REAPED`. ``first`` marks a process's first registration, which
        forgets any cleanup of an earlier process with the same id.
        """
        node_id = record.id
        outcome = yield self._redis.eval(
            self._heartbeat_script,
            [keys.node(node_id), keys.node_cleanup(node_id)],
            [record.to_json(), ttl_ms, "1" if first else "0"],
        )
        yield self._redis.execute_command("SADD", keys.known_nodes(), node_id)
        if outcome != RENEWED:
            # Registered again: its topic is in use, whatever was planned for it.
            yield self._redis.execute_command("ZREM", keys.retired_topics(), node_id)
        return str(outcome)

    @inlineCallbacks
    def deregister(self, node_id: str, retire_at: float) -> Any:
        """Remove a node that stops cleanly; its topic is due for deletion then."""
        yield self._redis.execute_command("DEL", keys.node(node_id))
        yield self.forget(node_id, retire_at)

    @inlineCallbacks
    def known_nodes(self) -> Any:
        """Fire with the ids of the nodes registered and not yet cleaned up after."""
        members = yield self._redis.execute_command("SMEMBERS", keys.known_nodes())
        return sorted(str(member) for member in members or ())

    @inlineCallbacks
    def registrations(self, node_ids: list[str]) -> Any:
        """Fire with a dict of node id to :class:`NodeRecord`, or None if expired."""
        replies = yield gather_all(
            [self._redis.execute_command("GET", keys.node(n)) for n in node_ids]
        )
        records: dict[str, NodeRecord | None] = {}
        for node_id, raw in zip(node_ids, replies, strict=True):
            records[node_id] = None if raw is None else _parse_or_stub(node_id, raw)
        return records

    @inlineCallbacks
    def is_registered(self, node_id: str) -> Any:
        """Fire True while ``node_id``'s registration has not expired."""
        exists = yield self._redis.execute_command("EXISTS", keys.node(node_id))
        return bool(int(exists))

    # Cleanup after a dead node

    @inlineCallbacks
    def begin_cleanup(
        self, node_id: str, token: str, lease_ms: int, reaper: str, own: bool
    ) -> Any:
        """Lock ``node_id`` for cleanup and set its session index aside.

        Fires with :data:`ALIVE`, :data:`DONE`, :data:`BUSY` or :data:`LOCKED`.
        ``own`` is a node cleaning up after an earlier process with its id.
        """
        outcome = yield self._redis.eval(
            self._begin_script,
            [
                keys.node(node_id),
                keys.node_cleanup_lock(node_id),
                keys.node_cleanup(node_id),
                keys.node_sessions(node_id),
                keys.node_orphans(node_id),
            ],
            [token, lease_ms, self.record_ttl, reaper, "1" if own else "0"],
        )
        return str(outcome)

    @inlineCallbacks
    def orphans(self, node_id: str, cursor: str, count: int) -> Any:
        """Fire with (next cursor, entries) of the set-aside index; cursor "0" ends."""
        reply = yield self._redis.execute_command(
            "SSCAN", keys.node_orphans(node_id), cursor, "COUNT", count
        )
        next_cursor, entries = reply
        return str(next_cursor), [str(entry) for entry in entries or ()]

    @inlineCallbacks
    def orphans_left(self, node_id: str) -> Any:
        """Fire with how many set-aside index entries are not handled yet."""
        count = yield self._redis.execute_command("SCARD", keys.node_orphans(node_id))
        return int(count)

    @inlineCallbacks
    def cleanup_progress(
        self, node_id: str, token: str, lease_ms: int, handled: list[str]
    ) -> Any:
        """Drop ``handled`` entries and renew the lease; fires False if lock lost."""
        reply = yield self._redis.eval(
            self._step_script,
            [keys.node_cleanup_lock(node_id), keys.node_orphans(node_id)],
            [token, lease_ms, *handled],
        )
        return bool(int(reply))

    @inlineCallbacks
    def end_cleanup(self, node_id: str, token: str, sessions: int, own: bool) -> Any:
        """Release the lock and record the cleanup; fires GONE, BACK or LOST."""
        outcome = yield self._redis.eval(
            self._end_script,
            [
                keys.node(node_id),
                keys.node_cleanup_lock(node_id),
                keys.node_cleanup(node_id),
            ],
            [token, sessions, self.record_ttl, "1" if own else "0"],
        )
        return str(outcome)

    @inlineCallbacks
    def cleanup_record(self, node_id: str) -> Any:
        """Fire with the cleanup record of ``node_id`` (empty if none)."""
        flat = yield self._redis.execute_command("HGETALL", keys.node_cleanup(node_id))
        if isinstance(flat, dict):
            return {str(k): str(v) for k, v in flat.items()}
        items = list(flat or ())
        return {str(k): str(v) for k, v in zip(items[::2], items[1::2], strict=True)}

    @inlineCallbacks
    def forget(self, node_id: str, retire_at: float) -> Any:
        """Drop a dead node from the known nodes; its topic goes at ``retire_at``.

        Both steps are idempotent, so a reaper that repeats them changes nothing.
        """
        yield self._redis.execute_command(
            "ZADD", keys.retired_topics(), "NX", retire_at, node_id
        )
        yield self._redis.execute_command("SREM", keys.known_nodes(), node_id)

    # Topics of dead nodes

    @inlineCallbacks
    def due_topics(self, now: float, limit: int) -> Any:
        """Fire with up to ``limit`` node ids whose topic is due for deletion."""
        members = yield self._redis.execute_command(
            "ZRANGEBYSCORE", keys.retired_topics(), "-inf", now, "LIMIT", 0, limit
        )
        return [str(member) for member in members or ()]

    @inlineCallbacks
    def take_topic(self, node_id: str) -> Any:
        """Claim the deletion of ``node_id``'s topic; fires False if another did."""
        removed = yield self._redis.execute_command(
            "ZREM", keys.retired_topics(), node_id
        )
        return bool(int(removed))

    def retry_topic(self, node_id: str, at: float) -> Any:
        """Put ``node_id``'s topic back on the list, due at ``at``."""
        return self._redis.execute_command(
            "ZADD", keys.retired_topics(), "NX", at, node_id
        )


def gather_all(deferreds: list[Deferred[Any]]) -> Deferred[list[Any]]:
    """Fire with every result in order, or fail with the first failure as is.

    Unlike a bare ``gatherResults``, the caller sees the original error (such
    as RedisUnavailable), not a FirstError wrapping it.
    """

    def unwrap(reason: Failure) -> Failure:
        error = reason.value
        return error.subFailure if isinstance(error, FirstError) else reason

    return gatherResults(deferreds, consumeErrors=True).addErrback(unwrap)


def _parse_or_stub(node_id: str, raw: Any) -> NodeRecord:
    # A record this version cannot read still proves the node is alive.
    try:
        return NodeRecord.from_json(str(raw))
    except ValueError:
        return NodeRecord(node_id, "", "", "", "", 0, 0, 0)
