"""Kafka topic names and the notification wire format between nodes.

Documented in docs/kafka.md. Notifications are small JSON objects; the inbox
in Redis is the truth, so a lost notification delays delivery, never loses it.
"""

import json
from typing import Any

from wsha.broadcast.entry import BroadcastEntry, parse_audience
from wsha.wire import is_valid_stream_id

PREFIX = "wsha"


def node_topic(node_id: str) -> str:
    """The topic a node reads its own notifications from (one partition)."""
    return f"{PREFIX}.node.{node_id}"


INBOX = "inbox"
"""Notification kind: the user's inbox has new entries; pull them."""

TAKEOVER = "takeover"
"""Notification kind: a newer connection claimed this session; close older ones."""

BROADCAST = "broadcast"
"""Record kind on the broadcast topic: a broadcast was stored in the history."""


SUBSCRIPTIONS = "subscriptions"
"""Notification kind: a session's subscriptions were changed through the control API."""


def encode_subscriptions_notice(user: str, session_id: str) -> bytes:
    """Build the notice that tells a node to reload a session's subscriptions."""
    return json.dumps(
        {"kind": SUBSCRIPTIONS, "user": user, "session": session_id}
    ).encode()


KICK = "kick"
"""Notification kind: an operator kicked this session; close it (1008)."""


def encode_kick_notice(user: str, session_id: str, epoch: int) -> bytes:
    """Build the notice that tells a node to close a session an operator kicked.

    Only a connection whose epoch is ``epoch`` or older is closed: a newer one
    was opened after the operator looked.
    """
    return json.dumps(
        {"kind": KICK, "user": user, "session": session_id, "epoch": epoch}
    ).encode()


def encode_inbox_notice(user: str) -> bytes:
    """Build the notice that tells a node ``user``'s inbox grew."""
    return json.dumps({"kind": INBOX, "user": user}).encode()


def encode_takeover_notice(user: str, session_id: str, epoch: int) -> bytes:
    """Build the notice that tells a node a session moved to ``epoch``."""
    return json.dumps(
        {"kind": TAKEOVER, "user": user, "session": session_id, "epoch": epoch}
    ).encode()


KINDS = (INBOX, TAKEOVER, SUBSCRIPTIONS, KICK)


def decode_notice(raw: bytes) -> dict[str, Any]:
    """Parse a notice; raises ValueError on anything that is not one."""
    notice = json.loads(raw)
    if not isinstance(notice, dict) or notice.get("kind") not in KINDS:
        raise ValueError("not a wsha notice")
    if not isinstance(notice.get("user"), str):
        raise ValueError("notice without a user")
    if notice["kind"] == SUBSCRIPTIONS and not isinstance(notice.get("session"), str):
        raise ValueError("subscriptions notice without a session")
    if notice["kind"] in (TAKEOVER, KICK):
        epoch = notice.get("epoch")
        if not isinstance(notice.get("session"), str):
            raise ValueError(f"{notice['kind']} notice without a session")
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            raise ValueError(f"{notice['kind']} notice without an integer epoch")
    return notice


BROADCAST_TOPIC = f"{PREFIX}.broadcast"
"""The default topic every node reads in full: system broadcasts (one partition)."""


def encode_broadcast_record(entry: BroadcastEntry, prev: str) -> bytes:
    """Build the record that announces a stored broadcast to every node.

    ``prev`` is the history id before the entry's: a node that has seen
    exactly it knows it missed nothing in between.
    """
    audience = entry.audience.to_json() if entry.audience is not None else None
    return json.dumps(
        {
            "kind": BROADCAST,
            "id": entry.id,
            "prev": prev,
            "from": entry.sender,
            "ts": entry.ts,
            "audience": audience,
            "body_json": entry.body_json,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


def decode_broadcast_record(raw: bytes) -> tuple[BroadcastEntry, str]:
    """Parse a broadcast record into (entry, previous id); raises ValueError."""
    record = json.loads(raw)
    if not isinstance(record, dict) or record.get("kind") != BROADCAST:
        raise ValueError("not a wsha broadcast record")
    for field in ("id", "prev", "from", "body_json"):
        if not isinstance(record.get(field), str):
            raise ValueError(f"broadcast record without a string {field!r}")
    for field in ("id", "prev"):
        if not is_valid_stream_id(record[field]):
            raise ValueError(f"broadcast record {field!r} is not a history id")
    ts = record.get("ts")
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise ValueError("broadcast record without an integer 'ts'")
    audience = parse_audience(record.get("audience"))
    entry = BroadcastEntry(
        record["id"], record["from"], record["body_json"], ts, audience
    )
    return entry, record["prev"]
