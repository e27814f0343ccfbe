"""``POST /v1/admin/drain``: an operator asks a node to drain and exit.

Documented in docs/control-api.md. The node answers at once (202) and then
drains as on SIGTERM (:mod:`wsha.drain`); its process exits once drained.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.web import resource
from twisted.web.iweb import IRequest

from wsha.control import Guarded, write_json
from wsha.drain import NodeDrain


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
        """Start the drain (once; asking again changes nothing) and say how it goes."""
        started = self._drain.request()
        timing = self._drain.timing
        return write_json(
            request,
            202,
            {
                "node": self._drain.node_id,
                "draining": True,
                "started": started,
                "grace_ms": int(timing.grace * 1000),
                "window_ms": int(timing.window * 1000),
                "move_timeout_ms": int(timing.move_timeout * 1000),
                "timeout_ms": int(timing.timeout * 1000),
            },
        )


def admin_resource(commands: Mapping[bytes, resource.Resource]) -> resource.Resource:
    """The ``/v1/admin`` folder holding ``commands`` by path segment."""
    admin = resource.Resource()
    for name, command in commands.items():
        admin.putChild(name, command)
    return admin
