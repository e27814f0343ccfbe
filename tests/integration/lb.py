"""A real HAProxy in front of test nodes, run by ``scripts/haproxy`` on free ports.

Blocking helpers (they run the script, read the stats page, talk to the
runtime API): call them from fixtures, or through ``deferToThread`` in tests
that run on the reactor.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from wsha.haproxy import NodeEndpoint, ProxyStats, RuntimeAPI, Slot, parse_stat
from wsha.localcluster import LocalNode, free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "haproxy"


@dataclass
class LocalHAProxy:
    """One HAProxy instance on 127.0.0.1, started and stopped by the script."""

    port: int = field(default_factory=free_port)
    stats_port: int = field(default_factory=free_port)

    @property
    def run_dir(self) -> Path:
        """Where the script keeps this instance's pidfile, socket and log."""
        return REPO / ".run" / f"haproxy-{self.port}"

    @property
    def ws_url(self) -> str:
        """The gateway's WebSocket URL through the balancer."""
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def api(self) -> RuntimeAPI:
        """The runtime API on this instance's admin socket."""
        return RuntimeAPI(str(self.run_dir / "haproxy.sock"))

    def script(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``scripts/haproxy`` for this instance; the result, checked by callers."""
        env = dict(
            os.environ,
            WSHA_LB_PORT=str(self.port),
            WSHA_LB_STATS_PORT=str(self.stats_port),
        )
        return subprocess.run(
            [str(SCRIPT), *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def start(self) -> None:
        """Start HAProxy and return once its runtime API answers."""
        result = self.script("start")
        if result.returncode != 0:
            raise RuntimeError(f"scripts/haproxy start failed:\n{result.stderr}")

    def stop(self) -> None:
        """Stop HAProxy and delete its state folder."""
        result = self.script("stop")
        if result.returncode != 0:
            raise RuntimeError(f"scripts/haproxy stop failed:\n{result.stderr}")
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def add(self, node: LocalNode) -> Slot:
        """Put ``node`` in rotation (it takes traffic once its health check passes)."""
        return self.api.add(NodeEndpoint("127.0.0.1", node.ws_port, node.control_port))

    def slot_of(self, node: LocalNode) -> Slot:
        """The slot that holds ``node``."""
        return self.api.find(f"127.0.0.1:{node.ws_port}")

    def wait_state(self, node: LocalNode, state: str, timeout: float = 10.0) -> float:
        """Wait until ``node``'s slot is in ``state`` (:attr:`Slot.state`, any case);
        return the seconds it took."""
        started = time.monotonic()
        while (now := time.monotonic()) - started < timeout:
            if self.slot_of(node).state == state.lower():
                return now - started
            time.sleep(0.02)
        raise AssertionError(
            f"{node.node_id} not {state} in {timeout}s: {self.slot_of(node)}"
        )

    def page_stats(self) -> list[ProxyStats]:
        """HAProxy's counters as its stats page serves them (CSV)."""
        url = f"http://127.0.0.1:{self.stats_port}/stats;csv"
        with urllib.request.urlopen(url, timeout=5) as response:
            return parse_stat(response.read().decode())

    def counters(self, proxy: str, name: str) -> ProxyStats:
        """One row of the stats page, e.g. ``("wsha", "FRONTEND")``."""
        for row in self.page_stats():
            if (row.proxy, row.name) == (proxy, name):
                return row
        raise KeyError(f"{proxy}/{name} not on the stats page")

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of HAProxy's log."""
        log = self.run_dir / "haproxy.log"
        if not log.exists():
            return ""
        return "".join(log.read_text(errors="replace").splitlines(True)[-lines:])


@contextmanager
def running_haproxy() -> Iterator[LocalHAProxy]:
    """A started :class:`LocalHAProxy` with no node yet; stopped on exit."""
    balancer = LocalHAProxy()
    balancer.start()
    try:
        yield balancer
    finally:
        balancer.stop()
