"""The fault suite's world: its own Redis and Kafka (which it breaks), three real
nodes behind a real HAProxy, and hundreds of clients exchanging numbered
messages through the balancer.

Run it alone with ``scripts/test -m faults``; ``scripts/test`` runs it with the
rest. Every case prints what was sent, delivered, lost and duplicated, and how
long clients took to be resumed.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from tests.integration.conftest import RUN_DIR
from tests.integration.lb import LocalHAProxy, running_haproxy
from tests.integration.owned import OwnedService, SentinelSet, start_sentinels
from wsha.auth import mint_token
from wsha.localcluster import LocalNode

# Fast failure detection so each case takes seconds: pings every second, a
# link silent for 2 s more is dead; Redis calls give up after 3 s; without
# Kafka, inboxes are pulled every 200 ms.
NODE_SETTINGS = [
    "--ping-interval=1",
    "--ping-timeout=2",
    "--redis-timeout=3",
    "--kafka-fallback-interval=0.2",
]


# Each case's figures, printed at the end of the run whatever the capture mode.
FIGURES: list[str] = []


def record(line: str) -> None:
    """Keep one case's figures for the run's summary (and print them now)."""
    FIGURES.append(line)
    print("\n" + line)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print every fault case's figures after the test results."""
    if FIGURES:
        terminalreporter.section("fault suite figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of this folder as a fault test."""
    for item in items:
        if "tests/faults/" in str(item.fspath):
            item.add_marker(pytest.mark.faults)


@pytest.fixture(scope="session")
def fault_redis() -> Iterator[OwnedService]:
    """The suite's own Redis, which cases freeze."""
    redis = OwnedService("redis")
    redis.start()
    yield redis
    redis.stop()


@pytest.fixture(scope="session")
def fault_kafka() -> Iterator[OwnedService]:
    """The suite's own Kafka broker, which cases stop."""
    kafka = OwnedService("kafka-broker")
    kafka.start()
    yield kafka
    kafka.stop()


@dataclass
class FaultCluster:
    """Nodes behind HAProxy, sharing one JWT secret."""

    nodes: list[LocalNode]
    balancer: LocalHAProxy
    secret: str
    redis_url: str
    kafka: OwnedService
    redis: OwnedService | None = None
    sentinels: SentinelSet | None = None

    def token(self, user: str) -> str:
        """A valid token for ``user``."""
        return mint_token(self.secret, user, 3600)

    def start_node(self, extra: list[str] | None = None) -> LocalNode:
        """Start one more node, wait until ready and put it behind the balancer."""
        node = LocalNode(
            f"fault-{secrets.token_hex(3)}",
            self.redis_url,
            self.kafka.address,
            self.secret,
            RUN_DIR,
            extra_args=[*NODE_SETTINGS, *(extra or [])],
        )
        node.start()
        node.wait_ready()
        self.balancer.add(node)
        self.balancer.wait_state(node, "UP", 15)
        self.nodes.append(node)
        return node


@contextmanager
def three_nodes(
    redis_url: str,
    kafka: OwnedService,
    redis: OwnedService | None = None,
    extra: list[str] | None = None,
) -> Iterator[FaultCluster]:
    """Three fresh nodes behind a fresh HAProxy; all stopped on exit."""
    with running_haproxy() as balancer:
        cluster = FaultCluster(
            [], balancer, secrets.token_urlsafe(32), redis_url, kafka, redis
        )
        try:
            for _ in range(3):
                cluster.start_node(extra)
            yield cluster
        finally:
            for node in cluster.nodes:
                node.kill()


@pytest.fixture
def fault_cluster(
    fault_redis: OwnedService, fault_kafka: OwnedService
) -> Iterator[FaultCluster]:
    """Three nodes on the suite's own Redis and Kafka, behind HAProxy."""
    with three_nodes(
        f"redis://{fault_redis.address}/0", fault_kafka, fault_redis
    ) as cluster:
        yield cluster


@pytest.fixture
def sentinel_cluster(fault_kafka: OwnedService) -> Iterator[FaultCluster]:
    """Three nodes that find Redis through a Sentinel set, behind HAProxy."""
    sentinels = start_sentinels()
    try:
        # A message counts once the replica has it, so a failover cannot
        # take back what was acknowledged or delivered.
        with three_nodes(
            sentinels.url, fault_kafka, extra=["--redis-min-replicas=1"]
        ) as cluster:
            cluster.sentinels = sentinels
            yield cluster
    finally:
        sentinels.run("stop")
