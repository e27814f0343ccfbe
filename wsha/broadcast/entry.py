"""What a system broadcast is: its audience and its stored entry."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from wsha.wire import is_valid_name

ALL = "all"
TAG = "tag"
NODE = "node"

NODE_ID_PATTERN = re.compile(r"^[A-Za-z0-9._\-]{1,249}$")
"""Node ids an audience may name: the characters a Kafka topic name allows."""


@dataclass(frozen=True)
class Audience:
    """Who a broadcast is for.

    :param kind: ``all`` (every session), ``tag`` (sessions whose token carries
        the tag) or ``node`` (sessions connected to that node when it arrives).
    :param value: the tag or the node id; empty for ``all``.
    """

    kind: str
    value: str = ""

    def to_json(self) -> Any:
        """The audience as the control API and the history spell it."""
        if self.kind == ALL:
            return ALL
        return {self.kind: self.value}

    def encode(self) -> str:
        """The audience as compact JSON text."""
        return json.dumps(self.to_json(), separators=(",", ":"))


EVERYONE = Audience(ALL)


def parse_audience(value: Any) -> Audience:
    """Validate an audience: ``"all"``, ``{"tag": <tag>}`` or ``{"node": <id>}``.

    :raises ValueError: saying what is wrong with it.
    """
    if value == ALL:
        return EVERYONE
    if not isinstance(value, dict) or len(value) != 1:
        raise ValueError('audience must be "all", {"tag": <tag>} or {"node": <id>}')
    ((kind, name),) = value.items()
    if kind == TAG:
        if not isinstance(name, str) or not is_valid_name(name):
            raise ValueError("audience tag must be 1-128 characters A-Z a-z 0-9 _.@:/-")
        return Audience(TAG, name)
    if kind == NODE:
        if not isinstance(name, str) or not NODE_ID_PATTERN.match(name):
            raise ValueError("audience node must be a node id")
        return Audience(NODE, name)
    raise ValueError(f"unknown audience {str(kind)[:40]!r}")


def decode_audience(text: str) -> Audience:
    """Parse an audience stored as JSON text; raises ValueError if malformed."""
    try:
        value = json.loads(text)
    except ValueError:
        raise ValueError("audience is not JSON") from None
    return parse_audience(value)


@dataclass(frozen=True)
class BroadcastEntry:
    """One broadcast as stored in the history.

    :param id: its history id (a Redis stream id); ids order the broadcasts.
    :param sender: who sent it (``server`` unless the caller named someone).
    :param body_json: the body, already encoded as compact JSON.
    :param ts: when the gateway accepted it, in ms since the epoch.
    :param audience: who it is for; None if the stored audience is unreadable,
        in which case it reaches nobody.
    """

    id: str
    sender: str
    body_json: str
    ts: int
    audience: Audience | None
