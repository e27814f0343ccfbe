"""Kafka topic names and the notification wire format between nodes.

Documented in docs/kafka.md. Notifications are small JSON objects; the inbox
in Redis is the truth, so a lost notification delays delivery, never loses it.
"""

import json
from typing import Any

PREFIX = "wsha"


def node_topic(node_id: str) -> str:
    """The topic a node reads its own notifications from (one partition)."""
    return f"{PREFIX}.node.{node_id}"


INBOX = "inbox"
"""Notification kind: the user's inbox has new entries; pull them."""

TAKEOVER = "takeover"
"""Notification kind: a newer connection claimed this session; close older ones."""


SUBSCRIPTIONS = "subscriptions"
"""Notification kind: a session's subscriptions were changed through the control API."""


def encode_subscriptions_notice(user: str, session_id: str) -> bytes:
    """Build the notice that tells a node to reload a session's subscriptions."""
    return json.dumps(
        {"kind": SUBSCRIPTIONS, "user": user, "session": session_id}
    ).encode()


def encode_inbox_notice(user: str) -> bytes:
    """Build the notice that tells a node ``user``'s inbox grew."""
    return json.dumps({"kind": INBOX, "user": user}).encode()


def encode_takeover_notice(user: str, session_id: str, epoch: int) -> bytes:
    """Build the notice that tells a node a session moved to ``epoch``."""
    return json.dumps(
        {"kind": TAKEOVER, "user": user, "session": session_id, "epoch": epoch}
    ).encode()


KINDS = (INBOX, TAKEOVER, SUBSCRIPTIONS)


def decode_notice(raw: bytes) -> dict[str, Any]:
    """Parse a notice; raises ValueError on anything that is not one."""
    notice = json.loads(raw)
    if not isinstance(notice, dict) or notice.get("kind") not in KINDS:
        raise ValueError("not a wsha notice")
    if not isinstance(notice.get("user"), str):
        raise ValueError("notice without a user")
    if notice["kind"] == SUBSCRIPTIONS and not isinstance(notice.get("session"), str):
        raise ValueError("subscriptions notice without a session")
    if notice["kind"] == TAKEOVER:
        epoch = notice.get("epoch")
        if not isinstance(notice.get("session"), str):
            raise ValueError("takeover notice without a session")
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            raise ValueError("takeover notice without an integer epoch")
    return notice
