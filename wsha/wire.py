"""The client wire contract: frames, error codes and close codes.

The single source of truth for what ``docs/protocol.md`` describes. Frames are
JSON text objects with a ``type``; everything a client sends is validated here
before any other code sees it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

# Close codes: the client decides from these alone what to do next.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_SERVER_ERROR = 1011
CLOSE_RESTARTING = 1012
CLOSE_TRY_LATER = 1013
CLOSE_TAKEN_OVER = 4001
CLOSE_TOO_SLOW = 4008
CLOSE_TOO_MANY_SESSIONS = 4009
CLOSE_UNAUTHORIZED = 4401

# Error codes carried in ``error`` frames, with whether a retry can succeed.
ERRORS: dict[str, bool] = {
    "bad_json": False,
    "bad_frame": False,
    "unknown_type": False,
    "binary_not_supported": False,
    "bad_recipient": False,
    "body_too_big": False,
    "bad_group": False,
    "bad_instrument": False,
    "not_subscribed": False,
    "too_many_subscriptions": False,
    "bad_audience": False,
    "unavailable": True,
    "resend_earlier": True,
    "internal": True,
}

MAX_ID_LENGTH = 128
USER_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.@:\-]{1,128}$")
STREAM_ID_PATTERN = re.compile(r"^\d{1,20}-\d{1,20}$")
_MAX_ID_PART = 2**64 - 1
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.@:/\-]{1,128}$")
"""Group and instrument names: 1-128 characters, ``/`` allowed for hierarchy."""


class FrameError(Exception):
    """A client frame that cannot be accepted; becomes an ``error`` frame."""

    def __init__(self, code: str, message: str, frame_id: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.frame_id = frame_id


@dataclass(frozen=True)
class Send:
    """A client's ``send``: deliver ``body`` to user ``to``; ``id`` dedupes retries."""

    to: str
    id: str
    body: Any


@dataclass(frozen=True)
class Ack:
    """A client's ``ack``: it has received everything up to id ``upto``.

    Of its inbox by default; of group ``group``'s history, or of the broadcast
    history when ``broadcast`` is set.
    """

    upto: str
    group: str | None = None
    broadcast: bool = False


@dataclass(frozen=True)
class Subscribe:
    """A client's ``subscribe`` to a group or to an instrument's market data.

    :param id: the request id echoed in the answer, if given.
    :param group: the group (room) to join; exclusive with ``instrument``.
    :param instrument: the instrument to watch; exclusive with ``group``.
    :param after: where to start: a group history id, or an instrument stream id.
    :param presence: send this session the group's join and leave events.
    """

    id: str | None
    group: str | None = None
    instrument: str | None = None
    after: str | None = None
    presence: bool = False


@dataclass(frozen=True)
class Unsubscribe:
    """A client's ``unsubscribe`` from a group or an instrument."""

    id: str | None
    group: str | None = None
    instrument: str | None = None


@dataclass(frozen=True)
class Publish:
    """A client's ``publish`` to a group; ``id`` dedupes retries like a send's."""

    id: str
    group: str
    body: Any


@dataclass(frozen=True)
class PresenceQuery:
    """A client's ``presence`` request: who is online in ``group`` now."""

    id: str | None
    group: str


@dataclass(frozen=True)
class Ping:
    """A client's application-level ``ping``; answered with ``pong``."""

    id: str | None


ClientFrame = Send | Ack | Ping | Subscribe | Unsubscribe | Publish | PresenceQuery


def is_valid_user_id(user: str) -> bool:
    """Say whether ``user`` is usable as a user or session id."""
    return bool(USER_ID_PATTERN.match(user))


def is_valid_name(name: str) -> bool:
    """Say whether ``name`` is usable as a group or instrument name."""
    return bool(NAME_PATTERN.match(name))


MAX_GROUP_POSITIONS = 256
"""Groups a client may name in its ``group_after`` query parameter."""


def parse_group_positions(text: str) -> dict[str, str]:
    """Parse ``group_after``: a JSON object of group name to the last id seen.

    :raises ValueError: if it is not such an object, or names too many groups.
    """
    try:
        positions = loads_strict(text)
    except ValueError:
        raise ValueError("'group_after' is not JSON") from None
    if not isinstance(positions, dict) or len(positions) > MAX_GROUP_POSITIONS:
        raise ValueError(
            f"'group_after' must be an object of at most {MAX_GROUP_POSITIONS} groups"
        )
    for group, position in positions.items():
        if not is_valid_name(group) or not (
            isinstance(position, str) and is_valid_stream_id(position)
        ):
            raise ValueError("'group_after' maps group names to message ids")
    return positions


def is_valid_stream_id(value: str) -> bool:
    """Say whether ``value`` is a Redis Stream id (``<ms>-<seq>``) Redis can read after.

    Each part is a 64-bit unsigned number; the very last id is refused, since
    nothing can come after it (an exclusive read from it is an error).
    """
    if not STREAM_ID_PATTERN.match(value):
        return False
    ms, seq = stream_id_key(value)
    return ms <= _MAX_ID_PART and seq <= _MAX_ID_PART and ms + seq < 2 * _MAX_ID_PART


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads_strict(text: str) -> Any:
    """Parse JSON as a browser's ``JSON.parse`` accepts it, and only that.

    NaN and Infinity are refused (Python accepts them; no client could read
    them back), so are lone surrogates in strings (they cannot be encoded
    as UTF-8 to other clients) and nesting too deep to handle.

    :raises ValueError: naming what is wrong.
    """
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if _ESCAPED_SURROGATE.search(text):
        # Rare: only text with an escaped surrogate pays for this check.
        try:
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise ValueError("JSON string with a lone surrogate") from None
    return value


def stream_id_key(value: str) -> tuple[int, int]:
    """Turn a stream id into a tuple that orders the way Redis orders ids."""
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def parse_client_frame(text: str, max_body_bytes: int) -> ClientFrame:
    """Validate one text frame from a client and return what it asks for.

    :param text: the frame's payload, already decoded as UTF-8.
    :param max_body_bytes: the largest ``send`` body accepted, as encoded JSON.
    :raises FrameError: with the error code to send back.
    """
    try:
        frame = loads_strict(text)
    except ValueError as e:
        raise FrameError("bad_json", f"frame is not valid JSON: {e}") from None
    if not isinstance(frame, dict):
        raise FrameError("bad_frame", "frame must be a JSON object")

    frame_id = frame.get("id") if isinstance(frame.get("id"), str) else None
    kind = frame.get("type")
    if kind == "send":
        return _parse_send(frame, frame_id, max_body_bytes)
    if kind == "ack":
        return _parse_ack(frame, frame_id)
    if kind == "ping":
        return Ping(id=frame_id)
    if kind == "subscribe":
        return _parse_subscribe(frame, frame_id)
    if kind == "unsubscribe":
        group, instrument = _target(frame, frame_id)
        return Unsubscribe(id=frame_id, group=group, instrument=instrument)
    if kind == "publish":
        return _parse_publish(frame, frame_id, max_body_bytes)
    if kind == "presence":
        group = _name(frame, "group", "bad_group", frame_id)
        if group is None:
            raise FrameError("bad_group", "presence needs 'group'", frame_id)
        return PresenceQuery(id=frame_id, group=group)
    if not isinstance(kind, str):
        raise FrameError("bad_frame", "frame needs a string 'type'", frame_id)
    raise FrameError("unknown_type", f"unknown frame type {kind[:40]!r}", frame_id)


def _parse_send(frame: dict[str, Any], frame_id: str | None, max_body: int) -> Send:
    if frame_id is None or not 0 < len(frame_id) <= MAX_ID_LENGTH:
        raise FrameError("bad_frame", "send needs 'id', a string of 1-128 chars")
    to = frame.get("to")
    if not isinstance(to, str) or not is_valid_user_id(to):
        raise FrameError("bad_recipient", "send needs 'to', a valid user id", frame_id)
    if "body" not in frame:
        raise FrameError("bad_frame", "send needs a 'body'", frame_id)
    body = frame["body"]
    if len(encode_body(body).encode()) > max_body:
        raise FrameError("body_too_big", f"body over {max_body} bytes", frame_id)
    return Send(to=to, id=frame_id, body=body)


def _parse_ack(frame: dict[str, Any], frame_id: str | None) -> Ack:
    upto = frame.get("upto")
    if not isinstance(upto, str) or not is_valid_stream_id(upto):
        raise FrameError("bad_frame", "ack needs 'upto', a message id", frame_id)
    group = _name(frame, "group", "bad_group", frame_id)
    broadcast = frame.get("broadcast", False)
    if not isinstance(broadcast, bool) or (broadcast and group is not None):
        raise FrameError(
            "bad_frame", "ack 'broadcast' must be true or false, without 'group'"
        )
    return Ack(upto=upto, group=group, broadcast=broadcast)


def _name(
    frame: dict[str, Any], field: str, code: str, frame_id: str | None
) -> str | None:
    value = frame.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not is_valid_name(value):
        raise FrameError(code, f"'{field}' is not a valid name", frame_id)
    return value


def _target(frame: dict[str, Any], frame_id: str | None) -> tuple[str | None, ...]:
    group = _name(frame, "group", "bad_group", frame_id)
    instrument = _name(frame, "instrument", "bad_instrument", frame_id)
    if (group is None) == (instrument is None):
        raise FrameError(
            "bad_frame", "give exactly one of 'group' and 'instrument'", frame_id
        )
    return group, instrument


def _parse_subscribe(frame: dict[str, Any], frame_id: str | None) -> Subscribe:
    group, instrument = _target(frame, frame_id)
    after = frame.get("after")
    if after is not None and (
        not isinstance(after, str) or not is_valid_stream_id(after)
    ):
        raise FrameError("bad_frame", "'after' must be a message id", frame_id)
    presence = frame.get("presence", False)
    if not isinstance(presence, bool) or (presence and group is None):
        raise FrameError(
            "bad_frame", "'presence' must be true or false, for a group", frame_id
        )
    return Subscribe(
        id=frame_id, group=group, instrument=instrument, after=after, presence=presence
    )


def _parse_publish(
    frame: dict[str, Any], frame_id: str | None, max_body: int
) -> Publish:
    if frame_id is None or not 0 < len(frame_id) <= MAX_ID_LENGTH:
        raise FrameError("bad_frame", "publish needs 'id', a string of 1-128 chars")
    group = _name(frame, "group", "bad_group", frame_id)
    if group is None:
        raise FrameError("bad_group", "publish needs 'group'", frame_id)
    if "body" not in frame:
        raise FrameError("bad_frame", "publish needs a 'body'", frame_id)
    body = frame["body"]
    if len(encode_body(body).encode()) > max_body:
        raise FrameError("body_too_big", f"body over {max_body} bytes", frame_id)
    return Publish(id=frame_id, group=group, body=body)


def encode_body(body: Any) -> str:
    """Encode a message body once, compactly, for storage in the inbox."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def error_frame(code: str, message: str, frame_id: str | None = None) -> dict[str, Any]:
    """Build an ``error`` frame; ``retry`` says whether the same frame may succeed."""
    frame: dict[str, Any] = {
        "type": "error",
        "code": code,
        "message": message,
        "retry": ERRORS.get(code, False),
    }
    if frame_id is not None:
        frame["id"] = frame_id
    return frame


RECONNECT_DRAINING = "draining"
"""The ``reason`` of a ``reconnect`` frame sent by a node that is draining."""


def reconnect_frame(within_ms: int, reason: str = RECONNECT_DRAINING) -> dict[str, Any]:
    """Build a ``reconnect`` frame: open a new connection now, then let this one go.

    ``within_ms`` is how long the node keeps this connection open at most;
    after that it closes it with 1012.
    """
    return {"type": "reconnect", "reason": reason, "within_ms": within_ms}


def encode(frame: dict[str, Any]) -> bytes:
    """Encode a server frame for the wire."""
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False).encode()


def encode_message(entry_id: str, sender: str, body_json: str, ts: int) -> bytes:
    """Encode a ``message`` frame around a body that is already JSON.

    The body was encoded once when it was stored; it is spliced in, not
    decoded and encoded again for every recipient.
    """
    head: dict[str, Any] = {"type": "message", "id": entry_id, "from": sender}
    head["ts"] = ts
    return splice_json(head, "body", body_json)


def encode_tick(
    instrument: str, entry_id: str, value_json: str, snapshot: bool, conflated: bool
) -> bytes:
    """Encode a market data ``tick`` frame around a value that is already JSON.

    ``conflated`` is written only when true: ticks were skipped before this one.
    """
    head: dict[str, Any] = {"type": "tick", "instrument": instrument, "id": entry_id}
    head["snapshot"] = snapshot
    if conflated:
        head["conflated"] = True
    return splice_json(head, "value", value_json)


def encode_group_message(
    group: str, entry_id: str, sender: str, body_json: str, ts: int
) -> bytes:
    """Encode a ``group_message`` frame around a body that is already JSON."""
    head: dict[str, Any] = {"type": "group_message", "group": group, "id": entry_id}
    head.update({"from": sender, "ts": ts})
    return splice_json(head, "body", body_json)


def encode_broadcast(entry_id: str, sender: str, body_json: str, ts: int) -> bytes:
    """Encode a ``broadcast`` frame around a body that is already JSON."""
    head: dict[str, Any] = {"type": "broadcast", "id": entry_id, "from": sender}
    head["ts"] = ts
    return splice_json(head, "body", body_json)


def splice_json(head: dict[str, Any], field: str, value_json: str) -> bytes:
    """Encode ``head`` with one more ``field`` whose value is already JSON text."""
    text = json.dumps(head, separators=(",", ":"), ensure_ascii=False)
    return (text[:-1] + f',"{field}":' + value_json + "}").encode()
