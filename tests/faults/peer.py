"""A gateway client in a process of its own, so a test can freeze it (SIGSTOP).

Usage: python tests/faults/peer.py URL TOKEN SESSION [PING_INTERVAL PING_TIMEOUT]

Prints one JSON line per event on stdout: ``{"welcome": <frame>}`` after each
(re)connect, ``{"seq": n, "id": inbox_id}`` per message received, and
``{"closed": code}`` when a link is lost.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet import reactor

from wsha.client import GatewayClient


def emit(event: dict[str, Any]) -> None:
    """Write one event line and flush it at once."""
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> None:
    """Connect and report until killed."""
    url, token, session = argv[:3]
    ping_interval, ping_timeout = (float(v) for v in (argv[3:5] or ["2", "2"]))
    client = GatewayClient(
        reactor,
        url,
        token,
        session,
        lambda frame: emit({"seq": frame["body"]["seq"], "id": frame["id"]}),
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
    )
    client.on_welcome = lambda frame: emit({"welcome": frame})
    client.on_disconnected = lambda code, reason: emit({"closed": code})
    client.start()
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv[1:])
