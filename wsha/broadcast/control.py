"""``POST /v1/broadcast``: the control API's system broadcast command."""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from wsha import metrics
from wsha.broadcast.entry import Audience, parse_audience
from wsha.control import (
    Guarded,
    error_response,
    message_fields,
    read_command,
    respond_later,
)


class Sender(Protocol):
    """What the command needs: a :class:`~wsha.broadcast.sender.Broadcaster`."""

    def send(
        self, sender: str, client_id: str, body_json: str, audience: Audience
    ) -> Deferred[Any]:
        """Store and announce a broadcast; fires with ``Stored``."""


class BroadcastCommand(Guarded):
    """``POST /v1/broadcast``: store a broadcast in the history, then announce it.

    :param broadcaster: stores and announces broadcasts.
    :param token: the control token, if one is required.
    :param max_body_bytes: the largest ``body`` accepted, as JSON bytes.
    """

    isLeaf = True

    def __init__(self, broadcaster: Sender, token: str | None, max_body_bytes: int):
        super().__init__(token)
        self._broadcaster = broadcaster
        self._max_body_bytes = max_body_bytes

    def render_POST(self, request: IRequest) -> Any:
        """Validate the JSON body, store the broadcast, answer with its history id."""
        command = read_command(request)
        if isinstance(command, bytes):
            return command

        fields = message_fields(request, command, self._max_body_bytes)
        if isinstance(fields, bytes):
            return fields
        if "audience" not in command:
            return error_response(
                request, 400, "bad_audience", "'audience' is required"
            )
        try:
            audience = parse_audience(command["audience"])
        except ValueError as e:
            return error_response(request, 400, "bad_audience", str(e))

        def stored(result: Any) -> tuple[int, dict[str, Any]]:
            metrics.stored(metrics.BROADCAST, metrics.FROM_CONTROL, result.duplicate)
            return 200, {"id": result.id, "duplicate": result.duplicate}

        work = self._broadcaster.send(
            fields.sender, fields.client_id, fields.body_json, audience
        )
        return respond_later(request, work.addCallback(stored))
