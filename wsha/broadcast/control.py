"""``POST /v1/broadcast``: the control API's system broadcast command."""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from wsha import metrics, wire
from wsha.broadcast.entry import Audience, parse_audience
from wsha.control import (
    Guarded,
    command_id,
    error_response,
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

        sender = command.get("from", "server")
        client_id = command_id(command)
        if not isinstance(sender, str) or not wire.is_valid_user_id(sender):
            return error_response(
                request, 400, "bad_frame", "'from' must be a valid user id"
            )
        if client_id is None:
            return error_response(
                request, 400, "bad_frame", "'id' must be a string of 1-128 chars"
            )
        if "body" not in command:
            return error_response(request, 400, "bad_frame", "'body' is required")
        body_json = wire.encode_body(command["body"])
        if len(body_json.encode()) > self._max_body_bytes:
            return error_response(
                request, 413, "body_too_big", "body over the size limit"
            )
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

        work = self._broadcaster.send(sender, client_id, body_json, audience)
        return respond_later(request, work.addCallback(stored))
