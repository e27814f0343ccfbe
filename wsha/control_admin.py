"""The control API's operator commands: ``/v1/admin/move`` and ``/v1/admin/kick``.

Documented in docs/control-api.md. Both act on live connections and answer
once the work is set going: a move closes sessions over a window, a kick
reaches the node holding the session through that node's Kafka topic (or at
once when it is this node).
"""

from __future__ import annotations

import math
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.web import resource
from twisted.web.iweb import IRequest

from wsha import topics
from wsha.control import (
    Guarded,
    error_response,
    read_command,
    respond_later,
    user_and_session,
    write_json,
)
from wsha.gateway import Gateway
from wsha.session_mover import SessionMover

DEFAULT_MOVE_WINDOW = 10.0
"""Seconds a move is spread over when the request names none."""

MAX_MOVE_WINDOW = 3600.0
"""The longest window a move may be spread over."""


def _number(value: Any) -> float | None:
    # JSON numbers only: not booleans, not NaN or infinities.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


class MoveCommand(Guarded):
    """``POST /v1/admin/move``: close a share of this node's sessions with 1012,
    spread over a window, so that they reconnect through the balancer.

    :param mover: closes the sessions.
    :param node_id: this node's id, for the answer.
    :param token: the bearer token commands need.
    """

    isLeaf = True

    def __init__(self, mover: SessionMover, node_id: str, token: str | None):
        super().__init__(token)
        self._mover = mover
        self._node_id = node_id

    def render_POST(self, request: IRequest) -> Any:
        """Validate ``share`` and ``over_s``, start the move, answer 202."""
        command = read_command(request)
        if isinstance(command, bytes):
            return command
        share = _number(command.get("share"))
        if share is None or not 0 <= share <= 1:
            return error_response(
                request, 400, "bad_frame", "'share' must be a number from 0 to 1"
            )
        over = _number(command.get("over_s", DEFAULT_MOVE_WINDOW))
        if over is None or not 0 <= over <= MAX_MOVE_WINDOW:
            return error_response(
                request, 400, "bad_frame", "'over_s' must be a number from 0 to 3600"
            )
        move = self._mover.move(share, over)
        return write_json(
            request,
            202,
            {
                "node": self._node_id,
                "sessions": move.sessions,
                "moving": move.moving,
                "over_s": move.over,
                "cancelled": move.cancelled,
            },
        )


class KickCommand(Guarded):
    """``POST /v1/admin/kick``: close a user's connections, or one session's, with
    1008 ``kicked by operator``, on whichever nodes hold them.

    :param gateway: the node's gateway (session lookup, notices, local sessions).
    :param token: the bearer token commands need.
    """

    isLeaf = True

    def __init__(self, gateway: Gateway, token: str | None):
        super().__init__(token)
        self._gateway = gateway

    def render_POST(self, request: IRequest) -> Any:
        """Validate ``user`` and ``session``, then find and close the sessions."""
        command = read_command(request)
        if isinstance(command, bytes):
            return command
        target = user_and_session(request, command)
        if isinstance(target, bytes):
            return target
        return respond_later(request, self._kick(*target))

    @inlineCallbacks
    def _kick(self, user: str, session: str | None) -> Any:
        gateway = self._gateway
        known = yield gateway.registry.lookup(user)
        sessions = [s for s in known if session is None or s.session == session]
        if session is not None and not sessions:
            return 404, {
                "error": "not_found",
                "message": f"no session {session} of {user}",
                "retry": False,
            }
        kicked = []
        for info in sessions:
            if not info.online or not info.node:
                continue
            epoch = int(info.epoch)
            if info.node == gateway.node_id:
                gateway.kick_local(user, info.session, epoch)
            elif gateway.live_nodes.is_live(info.node):
                gateway.bus.send(
                    info.node,
                    topics.encode_kick_notice(user, info.session, epoch),
                    key=user.encode(),
                )
            else:
                # Its node is dead: the connection is gone with it.
                continue
            kicked.append({"session": info.session, "node": info.node, "epoch": epoch})
        gateway.log.info(
            "Operator kicked {user}: {count} sessions told to close",
            user=user,
            count=len(kicked),
        )
        return 200, {"user": user, "kicked": kicked}


def admin_commands(
    gateway: Gateway, mover: SessionMover, token: str | None
) -> resource.Resource:
    """The ``/v1/admin`` resource with its ``move`` and ``kick`` children; more
    operator commands are added with ``putChild``."""
    admin = Guarded(token)
    admin.putChild(b"move", MoveCommand(mover, gateway.node_id, token))
    admin.putChild(b"kick", KickCommand(gateway, token))
    return admin
