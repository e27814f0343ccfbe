"""The ``wsha`` twistd plugin: options and the service they build.

``twistd -n wsha --port tcp:8080 --redis redis://127.0.0.1:6379/0 --kafka
127.0.0.1:9092`` runs a node. Every option may also come from the environment
as ``WSHA_<OPTION>`` (``WSHA_JWT_SECRET``, ``WSHA_NODE_ID``...); a command-line
option wins.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from wsha.config import NodeConfig
from wsha.node import GatewayNode


def _defaults() -> NodeConfig:
    return NodeConfig.from_environment()


class Options(usage.Options):
    """Command-line options of a gateway node."""

    synopsis = "[wsha options]"
    longdesc = (
        "Runs one node of the wsha WebSocket gateway. Clients connect to "
        "ws://<port>/ws; operators use the control port. Options can also be set "
        "as WSHA_<NAME> environment variables (dashes become underscores)."
    )

    optParameters = [
        ["port", "p", None, "WebSocket endpoint (Twisted strports), e.g. tcp:8080."],
        [
            "control-port",
            None,
            None,
            "Control API endpoint, e.g. tcp:8081:interface=127.0.0.1.",
        ],
        ["redis", None, None, "Redis URL redis://[user:password@]host:port/db."],
        ["kafka", None, None, "Kafka bootstrap servers host:port[,host:port]."],
        [
            "node-id",
            None,
            None,
            "This node's id (default: host name plus a random suffix).",
        ],
        [
            "jwt-secret",
            None,
            None,
            "Key that verifies client tokens (HS256 secret or PEM key).",
        ],
        [
            "jwt-algorithms",
            None,
            None,
            "Comma-separated JWT algorithms accepted (default HS256).",
        ],
        ["jwt-audience", None, None, "Required 'aud' claim of client tokens, if any."],
        [
            "control-token",
            None,
            None,
            "Bearer token the control API's commands require.",
        ],
        [
            "max-message-bytes",
            None,
            None,
            "Largest WebSocket message; larger closes with 1009.",
            int,
        ],
        ["max-body-bytes", None, None, "Largest 'send' body, as JSON.", int],
        ["inbox-max-length", None, None, "Messages kept per inbox (approximate).", int],
        [
            "inbox-ttl",
            None,
            None,
            "Seconds an inbox lives after its last message.",
            int,
        ],
        ["dedupe-ttl", None, None, "Seconds a client message id is remembered.", int],
        ["session-ttl", None, None, "Seconds an idle session's cursor is kept.", int],
        [
            "redis-timeout",
            None,
            None,
            "Seconds to wait for Redis to connect or answer.",
            float,
        ],
        [
            "ping-interval",
            None,
            None,
            "Seconds between WebSocket pings (0: none).",
            float,
        ],
        [
            "ping-timeout",
            None,
            None,
            "Seconds to wait for a pong before dropping.",
            float,
        ],
    ]

    def postOptions(self) -> None:
        """Merge the environment with the command line and check the result."""
        try:
            config = _defaults()
            for key, value in self.items():
                if value is not None:
                    setattr(config, key.replace("-", "_"), value)
            config.check()
        except (ValueError, OSError) as e:
            raise usage.UsageError(str(e)) from None
        self["config"] = config


def makeService(options: Options) -> Any:
    """Build a node from parsed options (used by twistd and by .tac files)."""
    from twisted.internet import reactor

    return GatewayNode(options["config"], reactor)


def node_from_config(config: NodeConfig) -> GatewayNode:
    """Build a node from a :class:`NodeConfig` (the .tac files' entry point)."""
    from twisted.internet import reactor

    return GatewayNode(config, reactor)
