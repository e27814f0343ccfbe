"""A private registry (its own Redis), nodes on it, and the discovery companion.

The shared Redis holds the registrations of every node other tests run, so a
companion reading it would put them all into the test's HAProxy: these tests
give their nodes and their companion a Redis of their own.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.integration.conftest import REPO, RUN_DIR, Services
from tests.integration.lb import LocalHAProxy
from tests.integration.owned import OwnedService
from wsha.auth import mint_token
from wsha.localcluster import LocalNode


@dataclass
class PrivateRegistry:
    """Nodes that share a Redis of their own (and the shared Kafka)."""

    services: Services
    redis: OwnedService = field(default_factory=lambda: OwnedService("redis"))
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    control_token: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    # Broadcasts stay among these nodes: others read the shared topic.
    broadcast_topic: str = field(
        default_factory=lambda: f"wsha.it-broadcast.{secrets.token_hex(4)}"
    )
    nodes: list[LocalNode] = field(default_factory=list)

    @property
    def redis_url(self) -> str:
        """The private Redis's URL."""
        return f"redis://127.0.0.1:{self.redis.port}/0"

    def token(self, user: str) -> str:
        """A client token for ``user``."""
        return mint_token(self.secret, user, 600)

    def start_node(self, *extra_args: str) -> LocalNode:
        """Start a node on the private Redis and wait until it is ready (blocking)."""
        node = LocalNode(
            f"it-disc-{secrets.token_hex(3)}",
            self.redis_url,
            self.services.kafka,
            self.secret,
            RUN_DIR,
            extra_args=[
                "--control-token",
                self.control_token,
                "--heartbeat-interval",
                "0.5",
                "--heartbeat-ttl",
                "2",
                "--reaper-interval",
                "0.5",
                f"--broadcast-topic={self.broadcast_topic}",
                *extra_args,
            ],
        )
        self.nodes.append(node)
        node.start()
        node.wait_ready()
        return node

    def stop_all(self) -> None:
        """Stop every node (killing any that will not stop), then the Redis."""
        for node in self.nodes:
            try:
                node.stop(timeout=15)
            finally:
                node.kill()
        self.redis.stop()


@contextmanager
def private_registry(services: Services) -> Iterator[PrivateRegistry]:
    """A started :class:`PrivateRegistry`; its nodes and Redis stopped on exit."""
    registry = PrivateRegistry(services)
    registry.redis.start()
    try:
        yield registry
    finally:
        registry.stop_all()


@dataclass
class Companion:
    """A ``python -m wsha.discovery`` process, logging JSON events to a file."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def events(self) -> list[dict[str, Any]]:
        """The structured events it logged so far."""
        if not self.log_path.exists():
            return []
        events = []
        for chunk in self.log_path.read_text(errors="replace").split("\x1e"):
            if chunk.strip():
                events.append(json.loads(chunk))
        return events

    def changes(self) -> list[dict[str, Any]]:
        """The events that report a change made to HAProxy."""
        return [e for e in self.events() if "action" in e and "error" not in e]

    def stop(self) -> int:
        """SIGTERM, wait, and return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@contextmanager
def running_companion(
    registry: PrivateRegistry, balancer: LocalHAProxy, *extra: str
) -> Iterator[Companion]:
    """The discovery companion for ``balancer``, every 0.2 s; stopped on exit."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    log_path = RUN_DIR / f"discovery-{balancer.port}.log"
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wsha.discovery",
                "--redis",
                registry.redis_url,
                "--haproxy-socket",
                str(balancer.run_dir / "haproxy.sock"),
                "--interval",
                "0.2",
                "--log-format",
                "json",
                *extra,
            ],
            cwd=REPO,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    companion = Companion(process, log_path)
    try:
        yield companion
    finally:
        companion.stop()


def admin(registry: PrivateRegistry, node: LocalNode, *argv: str) -> tuple[int, str]:
    """Run the CLI against ``node``'s control API (blocking); status and stdout."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsha.admin",
            "--control",
            node.control_url,
            *argv,
        ],
        cwd=REPO,
        env=dict(
            os.environ,
            PYTHONPATH=str(REPO),
            WSHA_CONTROL_TOKEN=registry.control_token,
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def admin_json(registry: PrivateRegistry, node: LocalNode, *argv: str) -> Any:
    """Run the CLI with ``--json``; its decoded answer (it must succeed)."""
    status, out = admin(registry, node, "--json", *argv)
    assert status == 0, out
    return json.loads(out)


def wait_until(condition: Any, timeout: float, what: str) -> None:
    """Poll ``condition()`` until true; AssertionError after ``timeout`` (blocking)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def wait_serving(balancer: LocalHAProxy, node: LocalNode, timeout: float = 15) -> None:
    """Wait until ``node`` has a slot and its health check passed (blocking)."""
    address = f"127.0.0.1:{node.ws_port}"
    wait_until(lambda: balancer.api.holds(address), timeout, f"{address} in a slot")
    balancer.wait_state(node, "up", timeout)


def wait_gone(balancer: LocalHAProxy, node: LocalNode, timeout: float = 15) -> None:
    """Wait until no slot holds ``node`` (blocking)."""
    address = f"127.0.0.1:{node.ws_port}"
    wait_until(
        lambda: not balancer.api.holds(address), timeout, f"{address} out of HAProxy"
    )
