"""Fixtures that run real Redis, real Kafka and real ``twistd`` gateway nodes.

Redis and Kafka are started by the project's own scripts (``scripts/redis``,
``scripts/kafka-broker``) on the ports in ``WSHA_REDIS_PORT`` / ``WSHA_KAFKA_PORT``,
or reused if they already answer there. Nodes are separate ``twistd``
processes on 127.0.0.1, like a real deployment.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.lb import LocalHAProxy, running_haproxy
from wsha.auth import mint_token
from wsha.localcluster import LocalNode

REPO = Path(__file__).resolve().parents[2]
RUN_DIR = REPO / ".run" / "tests"


@dataclass(frozen=True)
class Services:
    """Where the test Redis and Kafka listen."""

    redis_url: str
    kafka: str


@dataclass
class Cluster:
    """Running gateway nodes that share one JWT secret."""

    nodes: list[LocalNode]
    secret: str

    def token(self, user: str, ttl: float = 600, tags: list[str] | None = None) -> str:
        """A valid token for ``user``, carrying ``tags`` if given."""
        return mint_token(self.secret, user, ttl, tags=tags)


def _script(name: str, action: str) -> int:
    return subprocess.run(
        [str(REPO / "scripts" / name), action], cwd=REPO, check=False
    ).returncode


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    """Real Redis and Kafka: reused if running, else started (and stopped after)."""
    started = []
    for name in ("redis", "kafka-broker"):
        if _script(name, "status") != 0:
            assert _script(name, "start") == 0, f"scripts/{name} start failed"
            started.append(name)
    redis_port = os.environ.get("WSHA_REDIS_PORT", "6379")
    kafka_port = os.environ.get("WSHA_KAFKA_PORT", "9092")
    yield Services(f"redis://127.0.0.1:{redis_port}/0", f"127.0.0.1:{kafka_port}")
    for name in reversed(started):
        _script(name, "stop")


# Test nodes drain in a few seconds when a fixture stops them (clients a test
# left open would otherwise hold each stop for the default 22 s); the drain's
# own tests (test_drain.py, test_rolling_update.py) set their own timings.
QUICK_DRAIN = [
    "--drain-grace=0.5",
    "--drain-window=1",
    "--drain-move-timeout=2",
    "--drain-timeout=10",
]


def start_nodes(
    services: Services, count: int, extra_args: list[str] | None = None
) -> Cluster:
    """Start ``count`` nodes (with :data:`QUICK_DRAIN`, then ``extra_args``,
    which win) and wait until each is ready."""
    secret = secrets.token_urlsafe(32)
    tag = secrets.token_hex(3)
    nodes = [
        LocalNode(
            f"it-{tag}-{i}",
            services.redis_url,
            services.kafka,
            secret,
            RUN_DIR,
            extra_args=[*QUICK_DRAIN, *(extra_args or [])],
        )
        for i in range(1, count + 1)
    ]
    for node in nodes:
        node.start()
    try:
        for node in nodes:
            node.wait_ready()
    except Exception:
        for node in nodes:
            node.kill()
        raise
    return Cluster(nodes, secret)


@pytest.fixture(scope="module")
def cluster(services: Services) -> Iterator[Cluster]:
    """Two real gateway nodes for the tests of one module."""
    running = start_nodes(services, 2)
    yield running
    for node in running.nodes:
        node.stop()


@pytest.fixture
def haproxy() -> Iterator[LocalHAProxy]:
    """A real HAProxy on free ports with every slot free; stopped after the test."""
    with running_haproxy() as balancer:
        yield balancer


# Figures a load test wants in the run's summary, printed after the results
# whatever the capture mode.
FIGURES: list[str] = []


def record(line: str) -> None:
    """Keep ``line`` for the run's summary (and print it now)."""
    FIGURES.append(line)
    print("\n" + line)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the figures recorded by the integration tests."""
    if FIGURES:
        terminalreporter.section("integration figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
