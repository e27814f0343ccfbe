"""The group side of :class:`wsha.client.GatewayClient` (docs/protocol.md, "Groups").

The gateway keeps a session's subscriptions and restores them on every
reconnect, so the client only remembers, per group, the last message id it
handled (to drop what a resume sends again) and acknowledges it, so that a
device that lost its memory resumes near where it stopped.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from wsha import wire

FrameHook = Callable[[dict[str, Any]], None]

_ANSWERS = {"subscribe": "subscribed", "unsubscribe": "unsubscribed"}


class GroupRequestFailed(Exception):
    """The gateway refused a group request for good; ``code`` says why."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


class ClientGroups:
    """Group requests, per-group positions and group acks of one client.

    :param write: writes a frame on the current link; False if there is none.
    :param on_group_message: called with each new ``group_message``, in order.
    :param on_presence: called with each ``join`` and ``leave`` event.
    :param on_resync: called with ``{"group": ..., "after": ...}`` when a group
        could not be resumed because its history was trimmed past ``after``.
    """

    def __init__(
        self,
        write: Callable[[dict[str, Any]], bool],
        on_group_message: FrameHook | None = None,
        on_presence: FrameHook | None = None,
        on_resync: FrameHook | None = None,
    ):
        self._write = write
        self.on_group_message = on_group_message
        self.on_presence = on_presence
        self.on_resync = on_resync
        self.last: dict[str, str] = {}
        self._acked: dict[str, str] = {}
        self.subscribed: set[str] = set()
        self.duplicates_dropped = 0
        self._requests: OrderedDict[str, tuple[dict[str, Any], Deferred[Any]]] = (
            OrderedDict()
        )

    def request(self, frame: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """Send a subscribe, unsubscribe or presence request; fires with its answer.

        It is written again after every reconnect until answered (each of
        them is safe to repeat).
        """
        frame = {**frame, "id": frame.get("id") or uuid.uuid4().hex}
        d: Deferred[dict[str, Any]] = Deferred()
        self._requests[frame["id"]] = (frame, d)
        self._write(frame)
        return d

    def welcomed(self, welcome: dict[str, Any]) -> None:
        """A new link: learn the restored groups and repeat unanswered requests."""
        restored = welcome.get("groups") or {}
        self.subscribed = set(restored)
        for group, state in restored.items():
            if state.get("truncated") and self.on_resync is not None:
                self.on_resync({"group": group, "after": state.get("after")})
        for frame, _ in list(self._requests.values()):
            self._write(frame)

    def on_frame(self, frame: dict[str, Any]) -> bool:
        """Handle a group frame; False if ``frame`` is not one."""
        kind = frame.get("type")
        if kind == "group_message":
            self._message(frame)
        elif kind in ("join", "leave"):
            if self.on_presence is not None:
                self.on_presence(frame)
        elif kind in ("subscribed", "unsubscribed", "presence"):
            self._answered(frame)
        elif kind == "error" and frame.get("id") in self._requests:
            if frame.get("retry"):
                return True  # written again on the next welcome
            _, d = self._requests.pop(frame["id"])
            d.errback(
                GroupRequestFailed(str(frame.get("code")), str(frame.get("message")))
            )
        else:
            return False
        return True

    def positions(self) -> dict[str, str]:
        """The last id handled per subscribed group, for ``group_after``.

        Kept under about 3 KB of JSON so the connect URL passes balancers
        with small request buffers; the gateway resumes any group left out
        after its last acknowledged id (the client then drops the repeats).
        """
        chosen: dict[str, str] = {}
        size = 2
        for group in sorted(self.last):
            if group not in self.subscribed:
                continue
            size += len(group) + len(self.last[group]) + 6
            if size > 3000 or len(chosen) >= wire.MAX_GROUP_POSITIONS:
                break
            chosen[group] = self.last[group]
        return chosen

    def acks(self) -> list[dict[str, Any]]:
        """The group ``ack`` frames due; each is taken as sent once returned."""
        due = []
        for group, last in self.last.items():
            if self._acked.get(group) != last and group in self.subscribed:
                due.append({"type": "ack", "group": group, "upto": last})
                self._acked[group] = last
        return due

    def _message(self, frame: dict[str, Any]) -> None:
        group, entry_id = frame["group"], frame["id"]
        last = self.last.get(group)
        if last and wire.stream_id_key(entry_id) <= wire.stream_id_key(last):
            self.duplicates_dropped += 1
            return
        self.last[group] = entry_id
        if self.on_group_message is not None:
            self.on_group_message(frame)

    def _answered(self, frame: dict[str, Any]) -> None:
        group = frame.get("group")
        if frame["type"] == "subscribed":
            self.subscribed.add(str(group))
        elif frame["type"] == "unsubscribed":
            self.subscribed.discard(str(group))
            self.last.pop(str(group), None)
            self._acked.pop(str(group), None)
        pending = self._requests.get(frame.get("id", ""))
        if pending is not None:
            expected = _ANSWERS.get(pending[0]["type"], pending[0]["type"])
            if expected == frame["type"]:
                del self._requests[frame["id"]]
                pending[1].callback(frame)
