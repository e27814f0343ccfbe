"""``POST /v1/admin/drain``: an operator asks a node to drain and exit.

Documented in docs/control-api.md. The node answers at once (202) and then
drains as on SIGTERM (:mod:`wsha.drain`); its process exits once drained.
"""

from __future__ import annotations

import json
import math
from typing import Any

from twisted.web.iweb import IRequest

from wsha.control import MAX_REQUEST_BYTES, Guarded, error_response, write_json
from wsha.drain import NodeDrain

MAX_WINDOW = 3600.0
"""The longest window a drain request may ask for, in seconds."""


class BadDrainRequest(Exception):
    """A drain request's body that cannot be served; ``code`` is the error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def requested_window(raw: bytes) -> float | None:
    """The ``window`` of a drain request's body, or None for the node's own.

    An empty body asks for nothing.

    :raises BadDrainRequest: if the body is not JSON, or not such an object.
    """
    if not raw.strip():
        return None
    try:
        command = json.loads(raw)
    except ValueError:
        raise BadDrainRequest("bad_json", "request body is not JSON") from None
    if not isinstance(command, dict):
        raise BadDrainRequest("bad_frame", "request body must be an object")
    window = command.get("window")
    if window is None:
        return None
    if (
        isinstance(window, bool)
        or not isinstance(window, int | float)
        or not math.isfinite(window)
        or not 0 <= window <= MAX_WINDOW
    ):
        raise BadDrainRequest(
            "bad_frame",
            f"'window' must be a number of seconds from 0 to {MAX_WINDOW:.0f}",
        )
    return float(window)


class DrainCommand(Guarded):
    """``POST /v1/admin/drain``: start draining this node, then stop it.

    :param drain: the node's drain.
    :param token: the control token, demanded as a Bearer token when set.
    """

    isLeaf = True

    def __init__(self, drain: NodeDrain, token: str | None):
        super().__init__(token)
        self._drain = drain

    def render_POST(self, request: IRequest) -> Any:
        """Start the drain (once; asking again changes nothing) and say how it goes.

        The body may be empty, or ``{"window": <seconds>}`` to spread the
        clients' moves over another window than the node's own.
        """
        raw = request.content.read(MAX_REQUEST_BYTES + 1)
        if len(raw) > MAX_REQUEST_BYTES:
            return error_response(request, 413, "body_too_big", "request over 1 MiB")
        try:
            window = requested_window(raw)
        except BadDrainRequest as e:
            return error_response(request, 400, e.code, str(e))
        started = self._drain.request(window)
        timing = self._drain.timing
        return write_json(
            request,
            202,
            {
                "node": self._drain.node_id,
                "draining": True,
                "started": started,
                "window": timing.window,
                "grace_ms": int(timing.grace * 1000),
                "window_ms": int(timing.window * 1000),
                "move_timeout_ms": int(timing.move_timeout * 1000),
                "timeout_ms": int(timing.timeout * 1000),
            },
        )
