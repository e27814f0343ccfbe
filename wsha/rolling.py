"""Rolling update of a local cluster behind HAProxy: every node restarted in turn.

For each node, one at a time, once every node is up in HAProxy:

1. **Out of rotation.** The node's HAProxy slot is set to DRAIN through the
   runtime API: no new client goes to it, open connections stay.
2. **Drained.** The node is asked to drain, by SIGTERM (a process this tool
   started) or ``POST /v1/admin/drain``. Its clients move to the other nodes,
   make-before-break, spread over its drain window (:mod:`wsha.drain`); it
   flushes Kafka, deregisters and exits. The tool waits for the exit.
3. **Restarted.** A new process is started with the same node id and ports
   and waited for until its ``/readyz`` answers 200.
4. **Back in rotation.** The slot is set ready again; the tool waits until
   HAProxy's own checks mark it UP.

Each step's duration is printed as it ends, and a table at the end.

Every call here blocks (processes, HTTP, the runtime API's socket): run it
from a script or a test's thread, never on a reactor.

``python3 -m wsha.rolling`` (``scripts/rolling-update``) is the command line:
it finds the nodes in the node registry (``GET /v1/nodes`` of any node),
drains each through its control API, and starts each new process with the
tool's environment (``WSHA_*``, ``WSHA_JWT_SECRET`` required) plus the node's
id and ports.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from wsha.haproxy import NodeEndpoint, RuntimeAPI, RuntimeAPIError
from wsha.localcluster import LocalNode

SIGNAL = "signal"
API = "api"
"""How a node is asked to drain: SIGTERM, or ``POST /v1/admin/drain``."""


@dataclass(frozen=True)
class RestartTimes:
    """How long each step of one node's restart took, in seconds.

    :param node: the node id.
    :param how: ``signal`` or ``api``.
    :param out_of_rotation: setting its HAProxy slot to DRAIN.
    :param drained: from asking it to drain until its process exited.
    :param ready: from starting the new process until ``/readyz`` answered 200.
    :param back_in_rotation: from setting the slot ready until HAProxy saw it UP.
    :param exit_code: the old process's exit code, if this tool started it.
    """

    node: str
    how: str
    out_of_rotation: float
    drained: float
    ready: float
    back_in_rotation: float
    exit_code: int | None

    @property
    def total(self) -> float:
        """The whole restart of this node."""
        return self.out_of_rotation + self.drained + self.ready + self.back_in_rotation


class RollingUpdateError(Exception):
    """A step of the rolling update failed; the message says which and why."""


class RollingUpdate:
    """Restarts nodes behind HAProxy one at a time, each drained first.

    :param api: HAProxy's runtime API.
    :param nodes: the nodes, in the order they are restarted.
    :param control_token: the Bearer token of the nodes' control API.
    :param drain_timeout: seconds to wait for a drained node to exit.
    :param ready_timeout: seconds to wait for a new process to be ready.
    :param up_timeout: seconds to wait for HAProxy to see a node UP.
    :param report: called with one line per step as it ends.
    :param host: the address HAProxy reaches the nodes at.
    """

    def __init__(
        self,
        api: RuntimeAPI,
        nodes: Sequence[LocalNode],
        control_token: str | None = None,
        drain_timeout: float = 60.0,
        ready_timeout: float = 60.0,
        up_timeout: float = 30.0,
        report: Callable[[str], None] = print,
        host: str = "127.0.0.1",
    ):
        self.api = api
        self.nodes = list(nodes)
        self.control_token = control_token
        self.drain_timeout = drain_timeout
        self.ready_timeout = ready_timeout
        self.up_timeout = up_timeout
        self._report = report
        self.host = host

    def run(self, how: str | Sequence[str] = SIGNAL) -> list[RestartTimes]:
        """Restart every node in turn; ``how`` is one way for all, or one per node."""
        ways = [how] * len(self.nodes) if isinstance(how, str) else list(how)
        if len(ways) != len(self.nodes):
            raise ValueError("one way to drain per node")
        times = []
        for node, way in zip(self.nodes, ways, strict=True):
            self.wait_all_up()
            times.append(self.restart(node, way))
        self.wait_all_up()
        self._report(format_table(times))
        return times

    def restart(self, node: LocalNode, how: str = SIGNAL) -> RestartTimes:
        """Take ``node`` out of rotation, drain it, restart it, put it back."""
        target = f"{self.host}:{node.ws_port}"

        began = time.monotonic()
        self.api.drain(target)
        out = self._step(node, "out of rotation (HAProxy DRAIN)", began)

        began = time.monotonic()
        if how == SIGNAL:
            if node.process is None:
                raise RollingUpdateError(f"{node.node_id}: no process to signal")
            code = node.stop(self.drain_timeout)
            if code not in (0, -15):
                raise RollingUpdateError(
                    f"{node.node_id} exited with {code} after SIGTERM:\n"
                    f"{node.log_tail()}"
                )
        elif how == API:
            self.request_drain(node)
            try:
                code = node.wait_exit(self.drain_timeout)
            except TimeoutError as e:
                raise RollingUpdateError(
                    f"{e} {self.drain_timeout}s after drain"
                ) from e
        else:
            raise ValueError(f"unknown way to drain: {how}")
        # A process watched through its control port may still be stopping
        # (its control API closes before it deregisters): starting the new
        # one first would let the old one's deregistration remove it.
        self.wait_deregistered(node)
        drained = self._step(node, f"drained and exited ({how})", began)

        began = time.monotonic()
        node.process = None
        node.start()
        try:
            node.wait_ready(self.ready_timeout)
        except RuntimeError as e:
            raise RollingUpdateError(str(e)) from e
        ready = self._step(node, "restarted and ready", began)

        began = time.monotonic()
        self.api.add(NodeEndpoint(self.host, node.ws_port, node.control_port))
        self.wait_up(node)
        back = self._step(node, "back in rotation (HAProxy UP)", began)
        return RestartTimes(node.node_id, how, out, drained, ready, back, code)

    def request_drain(self, node: LocalNode) -> dict[str, Any]:
        """``POST /v1/admin/drain`` to ``node``; return its answer (202 expected)."""
        request = urllib.request.Request(
            f"{node.control_url}/v1/admin/drain", data=b"", method="POST"
        )
        if self.control_token:
            request.add_header("Authorization", f"Bearer {self.control_token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        except OSError as e:
            raise RollingUpdateError(
                f"{node.node_id}: drain request failed: {e}"
            ) from e
        if status != 202:
            raise RollingUpdateError(
                f"{node.node_id}: drain request answered {status}: {body[:200]!r}"
            )
        answer: dict[str, Any] = json.loads(body)
        return answer

    def wait_deregistered(self, node: LocalNode) -> None:
        """Wait until the node registry, as another node sees it, no longer
        lists ``node`` (it deregisters at the end of a clean stop)."""
        others = [n for n in self.nodes if n is not node]
        if not others:
            return
        deadline = time.monotonic() + self.drain_timeout
        while True:
            try:
                if node.node_id not in self._registered(others[0]):
                    return
                why = "still registered"
            except RollingUpdateError as e:
                # A node whose Redis is slow answers 503 for a while: ask again.
                why = str(e)
            if time.monotonic() > deadline:
                raise RollingUpdateError(
                    f"{node.node_id}: {why} {self.drain_timeout}s after its drain"
                )
            time.sleep(0.1)

    def _registered(self, via: LocalNode) -> set[str]:
        request = urllib.request.Request(f"{via.control_url}/v1/nodes")
        if self.control_token:
            request.add_header("Authorization", f"Bearer {self.control_token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                listing = json.loads(response.read())
        except (OSError, ValueError) as e:
            raise RollingUpdateError(f"reading {via.control_url}/v1/nodes: {e}") from e
        return {str(record["id"]) for record in listing.get("nodes", [])}

    def wait_up(self, node: LocalNode) -> None:
        """Wait until HAProxy's checks mark ``node`` UP."""
        target = f"{self.host}:{node.ws_port}"
        deadline = time.monotonic() + self.up_timeout
        while self.api.find(target).state != "up":
            if time.monotonic() > deadline:
                raise RollingUpdateError(
                    f"{node.node_id} not UP in HAProxy after {self.up_timeout}s: "
                    f"{self.api.find(target)}"
                )
            time.sleep(0.05)

    def wait_all_up(self) -> None:
        """Wait until every node is UP (nothing is restarted while one is not)."""
        for node in self.nodes:
            self.wait_up(node)

    def _step(self, node: LocalNode, what: str, began: float) -> float:
        took = time.monotonic() - began
        self._report(f"{node.node_id}: {what} in {took:.2f}s")
        return took


def format_table(times: Sequence[RestartTimes]) -> str:
    """The per-node step durations as a table, with the whole update's total."""
    lines = [
        f"{'node':<24} {'how':<7} {'out':>6} {'drained':>8} {'ready':>6} "
        f"{'back':>6} {'total':>7}"
    ]
    for t in times:
        lines.append(
            f"{t.node:<24} {t.how:<7} {t.out_of_rotation:>6.2f} {t.drained:>8.2f} "
            f"{t.ready:>6.2f} {t.back_in_rotation:>6.2f} {t.total:>7.2f}"
        )
    lines.append(
        f"{'all nodes':<24} {'':<7} {'':>6} {'':>8} {'':>6} {'':>6} "
        f"{sum(t.total for t in times):>7.2f}"
    )
    return "\n".join(lines)


def registered_nodes(
    control_url: str, token: str | None, run_dir: Path, redis: str, kafka: str
) -> list[LocalNode]:
    """The nodes in the registry (``GET /v1/nodes``), as restartable local nodes.

    Each keeps its id and ports; its new process gets this tool's environment.
    """
    secret = os.environ.get("WSHA_JWT_SECRET", "")
    if not secret:
        raise RollingUpdateError("WSHA_JWT_SECRET must be set: new nodes need it")
    request = urllib.request.Request(f"{control_url.rstrip('/')}/v1/nodes")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            listing = json.loads(response.read())
    except (OSError, ValueError) as e:
        raise RollingUpdateError(f"reading {control_url}/v1/nodes failed: {e}") from e
    nodes = []
    for record in listing.get("nodes", []):
        ws, control = urlparse(record["url"]), urlparse(record["control_url"])
        if ws.port is None or control.port is None:
            raise RollingUpdateError(f"node {record['id']} registers no ports")
        nodes.append(
            LocalNode(
                record["id"],
                redis,
                kafka,
                secret,
                run_dir,
                ws_port=ws.port,
                control_port=control.port,
                detach=True,
            )
        )
    if not nodes:
        raise RollingUpdateError(f"no node registered according to {control_url}")
    return nodes


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: restart every registered node behind HAProxy in turn."""
    parser = argparse.ArgumentParser(
        prog="python3 -m wsha.rolling",
        description="Restart every node of a local cluster behind HAProxy, one at "
        "a time, each drained first (POST /v1/admin/drain). Options after -- "
        "are given to each new node process.",
    )
    parser.add_argument("--socket", required=True, help="HAProxy's admin socket")
    parser.add_argument(
        "--control", required=True, help="control URL of any node, to list them"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("WSHA_CONTROL_TOKEN", ""),
        help="control token [default: $WSHA_CONTROL_TOKEN]",
    )
    parser.add_argument(
        "--redis", default=os.environ.get("WSHA_REDIS", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument(
        "--kafka", default=os.environ.get("WSHA_KAFKA", "127.0.0.1:9092")
    )
    parser.add_argument("--run-dir", default=".run/rolling", help="new nodes' logs")
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    parser.add_argument("node_options", nargs="*", help="after --: node options")
    args = parser.parse_args(argv)

    try:
        nodes = registered_nodes(
            args.control, args.token, Path(args.run_dir), args.redis, args.kafka
        )
        for node in nodes:
            node.extra_args = list(args.node_options)
        update = RollingUpdate(
            RuntimeAPI(args.socket),
            nodes,
            args.token or None,
            drain_timeout=args.drain_timeout,
        )
        update.run(API)
    except (OSError, RuntimeAPIError, RollingUpdateError, ValueError) as e:
        print(f"wsha.rolling: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
