"""Market data in Redis: each instrument's ticks, kept in a Redis Stream.

Any producer may append to an instrument's stream (docs/redis.md,
"Publishing market data"); the control API's publish goes through
:class:`InstrumentStore` too. Entries are read back as :class:`Tick`, checked
once per node: a malformed entry is skipped, never sent to a client.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger

from wsha import keys, wire
from wsha.inbox import RedisCommands

VALUE_FIELD = "v"
"""The stream entry field that holds a tick's value, as JSON text."""

log = Logger()


@dataclass(frozen=True)
class Tick:
    """One value of an instrument: its stream id and the value as JSON text."""

    instrument: str
    id: str
    value_json: str

    @cached_property
    def key(self) -> tuple[int, int]:
        """The id as a tuple that orders the way Redis orders ids."""
        return wire.stream_id_key(self.id)

    @cached_property
    def live_frame(self) -> bytes:
        """The plain live ``tick`` frame, encoded once for every watcher."""
        return wire.encode_tick(
            self.instrument, self.id, self.value_json, snapshot=False, conflated=False
        )

    def frame(self, snapshot: bool, conflated: bool) -> bytes:
        """The ``tick`` frame with these flags.

        :param snapshot: the value stands alone: the client starts afresh from it.
        :param conflated: ticks before this one were skipped.
        """
        if not snapshot and not conflated:
            return self.live_frame
        return wire.encode_tick(
            self.instrument, self.id, self.value_json, snapshot, conflated
        )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def is_json_value(text: str) -> bool:
    """Say whether ``text`` is one strict JSON value (no NaN or Infinity)."""
    try:
        json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return False
    return True


def parse_entry(instrument: str, entry: Any, max_value_bytes: int) -> Tick | None:
    """The tick in one stream entry (``[id, [field, value, ...]]``), or None.

    An entry without a ``v`` field, whose value is not JSON text (or not
    UTF-8), or is over ``max_value_bytes``, was not written by a well-behaved
    producer: it is logged and skipped.
    """
    entry_id, fields = entry[0], entry[1] or []
    value: Any = None
    for i in range(0, len(fields) - 1, 2):
        if fields[i] == VALUE_FIELD:
            value = fields[i + 1]
    if (
        isinstance(value, str)
        and len(value.encode()) <= max_value_bytes
        and is_json_value(value)
    ):
        return Tick(instrument, str(entry_id), value)
    log.warn(
        "Skipping entry {id} of instrument {instrument}: field 'v' missing, "
        "not JSON or over {limit} bytes",
        id=str(entry_id),
        instrument=instrument,
        limit=max_value_bytes,
    )
    return None


def parse_entries(
    instrument: str, entries: Sequence[Any], max_value_bytes: int
) -> list[Tick]:
    """The well-formed ticks among ``entries``, in the order given."""
    ticks = []
    for entry in entries:
        tick = parse_entry(instrument, entry, max_value_bytes)
        if tick is not None:
            ticks.append(tick)
    return ticks


class InstrumentStore:
    """Appends ticks to instruments' streams and reads their latest values.

    :param redis: the node's command connection.
    :param max_length: entries kept per stream by :meth:`publish`
        (approximately: ``MAXLEN ~``, which Redis trims cheaply in whole nodes).
    :param max_value_bytes: entries with larger values are skipped on reads.
    """

    def __init__(
        self,
        redis: RedisCommands,
        max_length: int = 1000,
        max_value_bytes: int = 64 * 1024,
    ):
        self._redis = redis
        self.max_length = max_length
        self.max_value_bytes = max_value_bytes

    @inlineCallbacks
    def publish(self, instrument: str, value_json: str) -> Any:
        """Append a tick whose value is ``value_json``; fires with its stream id."""
        entry_id = yield self._redis.execute_command(
            "XADD",
            keys.instrument_ticks(instrument),
            "MAXLEN",
            "~",
            self.max_length,
            "*",
            VALUE_FIELD,
            value_json,
        )
        return str(entry_id)

    @inlineCallbacks
    def latest(self, instrument: str) -> Any:
        """Fire with the instrument's newest well-formed :class:`Tick`, or None.

        A malformed newest entry is skipped in favour of the one before it
        (a few are looked at, not the whole stream).
        """
        entries = yield self._redis.execute_command(
            "XREVRANGE", keys.instrument_ticks(instrument), "+", "-", "COUNT", 8
        )
        for entry in entries or []:
            tick = parse_entry(instrument, entry, self.max_value_bytes)
            if tick is not None:
                return tick
        return None

    def tail(self, instrument: str, since: str, count: int) -> Deferred[Any]:
        """Fire with ``(ticks, contiguous)``: the newest entries from ``since`` on.

        ``ticks`` are at most ``count`` entries after ``since``, oldest first.
        ``contiguous`` is True when they are every entry after ``since``: the
        entry ``since`` itself is still in the stream (a stream is trimmed from
        its head, so nothing after it is gone) and no more than ``count``
        follow it. One round trip: ``XREVRANGE key + since COUNT count+1``.
        """
        d = self._redis.execute_command(
            "XREVRANGE",
            keys.instrument_ticks(instrument),
            "+",
            since,
            "COUNT",
            count + 1,
        )

        def parsed(entries: list[Any] | None) -> tuple[list[Tick], bool]:
            entries = list(reversed(entries or []))
            contiguous = bool(entries) and wire.stream_id_key(
                str(entries[0][0])
            ) == wire.stream_id_key(since)
            entries = entries[1:] if contiguous else entries[-count:]
            ticks = parse_entries(instrument, entries, self.max_value_bytes)
            return ticks, contiguous

        return d.addCallback(parsed)
