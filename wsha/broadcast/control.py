"""``POST /v1/broadcast``: the control API's system broadcast command."""

from __future__ import annotations

import json
import uuid
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from wsha import wire
from wsha.broadcast.entry import Audience, parse_audience
from wsha.control import MAX_REQUEST_BYTES, Guarded, _error, _respond_later


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
        raw = request.content.read(MAX_REQUEST_BYTES + 1)
        if len(raw) > MAX_REQUEST_BYTES:
            return _error(request, 413, "body_too_big", "request over 1 MiB")
        try:
            command = json.loads(raw)
        except ValueError:
            return _error(request, 400, "bad_json", "request body is not JSON")
        if not isinstance(command, dict):
            return _error(request, 400, "bad_frame", "request body must be an object")

        sender = command.get("from", "server")
        # As for /v1/send: only a missing id gets a random one.
        client_id = command["id"] if "id" in command else uuid.uuid4().hex
        if not isinstance(sender, str) or not wire.is_valid_user_id(sender):
            return _error(request, 400, "bad_frame", "'from' must be a valid user id")
        if (
            not isinstance(client_id, str)
            or not client_id
            or len(client_id) > wire.MAX_ID_LENGTH
        ):
            return _error(
                request, 400, "bad_frame", "'id' must be a string of 1-128 chars"
            )
        if "body" not in command:
            return _error(request, 400, "bad_frame", "'body' is required")
        body_json = wire.encode_body(command["body"])
        if len(body_json.encode()) > self._max_body_bytes:
            return _error(request, 413, "body_too_big", "body over the size limit")
        if "audience" not in command:
            return _error(request, 400, "bad_audience", "'audience' is required")
        try:
            audience = parse_audience(command["audience"])
        except ValueError as e:
            return _error(request, 400, "bad_audience", str(e))

        def stored(result: Any) -> tuple[int, dict[str, Any]]:
            return 200, {"id": result.id, "duplicate": result.duplicate}

        work = self._broadcaster.send(sender, client_id, body_json, audience)
        return _respond_later(request, work.addCallback(stored))
