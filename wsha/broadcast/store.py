"""BroadcastStore: the broadcast history in Redis and each session's cursor in it.

The history is the truth about broadcasts, as a user's inbox is about direct
messages: a broadcast is appended to it before anything announces it, and
every node and session reads it to fill whatever it missed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.logger import Logger

from wsha import keys
from wsha.broadcast.entry import Audience, BroadcastEntry, decode_audience
from wsha.inbox import Durability, RedisCommands
from wsha.lua import load
from wsha.services.redis_service import RedisUnavailable

NOTHING = "0-0"
"""The id before every broadcast."""


@dataclass(frozen=True)
class Stored:
    """What storing a broadcast did.

    :param id: its history id (the original one for a retry).
    :param prev: the id of the history entry before it (``0-0`` if none).
    :param duplicate: this (sender, client id) was stored before.
    :param entry: the entry as stored; None for a retry of one already
        trimmed from the history (there is nothing left to announce).
    """

    id: str
    prev: str
    duplicate: bool
    entry: BroadcastEntry | None


@dataclass(frozen=True)
class HistoryHead:
    """Where the history ends now.

    :param last: the newest id in it (``0-0`` if it is empty).
    :param trimmed: the newest id its length limit removed (``0-0`` if none).
    """

    last: str
    trimmed: str


def parse_entry(entry_id: str, flat: list[Any]) -> BroadcastEntry:
    """Turn one history entry's id and flat field list into a BroadcastEntry."""
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    audience: Audience | None
    try:
        audience = decode_audience(str(fields.get("a", "")))
    except ValueError:
        audience = None
    return BroadcastEntry(
        id=str(entry_id),
        sender=str(fields.get("f", "")),
        body_json=str(fields.get("b", "null")),
        ts=int(fields.get("t", 0)),
        audience=audience,
    )


class BroadcastStore:
    """Appends to and reads the broadcast history of one channel (Kafka topic).

    :param redis: a connected txredisapi connection or the node's RedisService.
    :param topic: the broadcast topic; it also names the history's keys.
    :param max_length: broadcasts kept in the history (exact).
    :param dedupe_ttl: seconds a (sender, client id) is remembered.
    :param session_ttl: seconds a session's keys live after its last ack.
    :param durability: replicas that must confirm a broadcast before it counts.
    """

    log = Logger()

    _append_script = load("broadcast_append")
    _cursor_script = load("broadcast_cursor")
    _ack_script = load("broadcast_ack")

    def __init__(
        self,
        redis: RedisCommands,
        topic: str,
        max_length: int = 1000,
        dedupe_ttl: int = 24 * 3600,
        session_ttl: int = 7 * 24 * 3600,
        durability: Durability | None = None,
    ):
        self._redis = redis
        self.topic = topic
        self.max_length = max_length
        self.dedupe_ttl = dedupe_ttl
        self.session_ttl = session_ttl
        self.durability = durability or Durability()

    @inlineCallbacks
    def append(
        self,
        sender: str,
        client_id: str,
        body_json: str,
        audience: Audience,
        ts: int,
    ) -> Any:
        """Store a broadcast once per (sender, client id); fires :class:`Stored`."""
        reply = yield self._redis.eval(
            self._append_script,
            [
                keys.broadcast_history(self.topic),
                keys.broadcast_dedupe(self.topic, sender, client_id),
                keys.broadcast_trimmed(self.topic),
            ],
            [
                sender,
                body_json,
                audience.encode(),
                ts,
                self.max_length,
                self.dedupe_ttl,
                client_id,
            ],
        )
        entry_id, prev, duplicate = str(reply[0]), str(reply[1]), bool(int(reply[2]))
        yield self._confirm_replicated()
        if not duplicate:
            entry = BroadcastEntry(entry_id, sender, body_json, ts, audience)
        elif len(reply) > 3:
            entry = parse_entry(entry_id, reply[3])
        else:
            entry = None
        return Stored(entry_id, prev, duplicate, entry)

    @inlineCallbacks
    def read_after(self, after: str, count: int) -> Any:
        """Fire with up to ``count`` history entries strictly after ``after``."""
        reply = yield self._redis.execute_command(
            "XRANGE",
            keys.broadcast_history(self.topic),
            "(" + after,
            "+",
            "COUNT",
            count,
        )
        if reply:
            # Never deliver what a failover could still take back.
            yield self._confirm_replicated()
        return [parse_entry(entry_id, flat) for entry_id, flat in reply or ()]

    @inlineCallbacks
    def head(self) -> Any:
        """Fire with the :class:`HistoryHead`: the newest id and the newest trimmed."""
        newest, trimmed = yield gatherResults(
            [
                self._redis.execute_command(
                    "XREVRANGE",
                    keys.broadcast_history(self.topic),
                    "+",
                    "-",
                    "COUNT",
                    1,
                ),
                self._redis.execute_command("GET", keys.broadcast_trimmed(self.topic)),
            ],
            consumeErrors=True,
        ).addErrback(_first_error)
        last = str(newest[0][0]) if newest else NOTHING
        return HistoryHead(last, str(trimmed) if trimmed else NOTHING)

    @inlineCallbacks
    def resume_point(self, user: str, session: str, epoch: str, default: str) -> Any:
        """Fire with the session's broadcast cursor, storing ``default`` if it has
        none; fires with ``default`` if ``epoch`` no longer owns the session."""
        reply = yield self._redis.eval(
            self._cursor_script, [keys.session(user, session)], [epoch, default]
        )
        return str(reply) if reply else default

    @inlineCallbacks
    def acknowledge(self, user: str, session: str, epoch: str, upto: str) -> Any:
        """Advance the session's broadcast cursor to ``upto`` (fenced by epoch) and
        renew the session's keys; fires True if the cursor moved."""
        reply = yield self._redis.eval(
            self._ack_script,
            [keys.session(user, session), keys.sessions(user), keys.online(user)],
            [epoch, upto, self.session_ttl],
        )
        return bool(int(reply))

    @inlineCallbacks
    def _confirm_replicated(self) -> Any:
        wanted = self.durability.replicas
        if wanted <= 0:
            return
        confirmed = yield self._redis.execute_command(
            "WAIT", wanted, self.durability.wait_ms
        )
        if int(confirmed) < wanted:
            raise RedisUnavailable(
                f"{confirmed} of {wanted} replicas confirmed within "
                f"{self.durability.wait_ms} ms"
            )


def _first_error(reason: Any) -> Any:
    # gatherResults wraps the failure; callers want the Redis error itself.
    return reason.value.subFailure
