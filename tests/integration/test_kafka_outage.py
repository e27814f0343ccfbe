"""Kafka outages: the inbox takes every message, delivery falls back to polling
and catches up, and a node starts even while the broker is down."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from tests.integration.conftest import RUN_DIR, Cluster, Services
from tests.integration.owned import OwnedService
from tests.integration.support import http_json, wait_for, within
from tests.integration.test_delivery import client, seqs, users
from wsha.localcluster import LocalNode

# Fast fallback so the test measures seconds, not the 1 s default's multiples.
FALLBACK = ["--kafka-fallback-interval=0.2"]


@pytest.fixture(scope="module")
def kafka() -> Iterator[OwnedService]:
    """A Kafka broker of this module's own, which the tests stop and restart."""
    broker = OwnedService("kafka-broker")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def outage_cluster(services: Services, kafka: OwnedService) -> Iterator[Cluster]:
    """Two nodes on the shared Redis and this module's own Kafka."""
    from tests.integration.conftest import start_nodes

    running = start_nodes(Services(services.redis_url, kafka.address), 2, FALLBACK)
    yield running
    for node in running.nodes:
        node.stop()


def kafka_state(node: LocalNode) -> Any:
    """Fires with the ``kafka`` flag of the node's readiness details."""
    d = http_json("GET", f"{node.control_url}/readyz")
    return d.addCallback(lambda reply: reply[1]["kafka"])


@pytest_twisted.inlineCallbacks
def test_messages_flow_through_a_kafka_outage(
    outage_cluster: Cluster, kafka: OwnedService
) -> Any:
    """With the broker stopped, sends are acknowledged and delivered across
    nodes by polling; after it returns, notices flow again; nothing is lost or
    duplicated and readiness stays green throughout."""
    cluster = outage_cluster
    alice, bob = users("alice", "bob")
    got: list[Any] = []
    a = client(cluster, 0, alice, "laptop", [])
    b = client(cluster, 1, bob, "phone", got)
    try:
        yield within(a.when_connected())
        yield within(b.when_connected())
        for node in cluster.nodes:
            yield wait_for(lambda node=node: kafka_state(node), 20, "kafka healthy")

        yield within(a.send(bob, {"seq": 0}))
        yield wait_for(lambda: len(got) == 1, 10, "delivery before the outage")

        yield deferToThread(kafka.stop)
        for node in cluster.nodes:
            yield wait_for(
                lambda node=node: kafka_state(node).addCallback(lambda up: not up),
                30,
                "nodes to see Kafka gone",
            )
        status, _ = yield http_json("GET", f"{cluster.nodes[0].control_url}/readyz")
        assert status == 200

        yield within(a.send(bob, {"seq": 1}))
        sent_at = reactor.seconds()
        yield wait_for(lambda: len(got) == 2, 10, "delivery by polling")
        polled_in = reactor.seconds() - sent_at
        for seq in range(2, 30):
            yield within(a.send(bob, {"seq": seq}))
        yield wait_for(lambda: len(got) == 30, 20, "every message during the outage")

        yield deferToThread(kafka.start)
        for node in cluster.nodes:
            yield wait_for(lambda node=node: kafka_state(node), 60, "Kafka back")
        for seq in range(30, 40):
            yield within(a.send(bob, {"seq": seq}))
        yield wait_for(lambda: len(got) == 40, 10, "delivery after the outage")

        assert seqs(got) == list(range(40))
        print(f"\nkafka outage: a message reached the other node in {polled_in:.2f}s")
    finally:
        a.stop()
        b.stop()


@pytest_twisted.inlineCallbacks
def test_a_node_starts_and_serves_while_kafka_is_down(
    services: Services, outage_cluster: Cluster, kafka: OwnedService
) -> Any:
    """A node started during an outage becomes ready, serves from the inbox,
    and attaches to its topic once the broker is back."""
    cluster = outage_cluster
    yield deferToThread(kafka.stop)
    late = LocalNode(
        "it-late-" + cluster.nodes[0].node_id,
        services.redis_url,
        kafka.address,
        cluster.secret,
        RUN_DIR,
        extra_args=FALLBACK,
    )
    late.start()
    try:
        yield deferToThread(late.wait_ready, 60)
        assert not (yield kafka_state(late))

        alice, bob = users("alice", "bob")
        got: list[Any] = []
        a = client(cluster, 0, alice, "laptop", [])
        late_cluster = Cluster([late], cluster.secret)
        b = client(late_cluster, 0, bob, "tablet", got)
        yield within(a.when_connected())
        yield within(b.when_connected())
        for seq in range(5):
            yield within(a.send(bob, {"seq": seq}))
        yield wait_for(lambda: len(got) == 5, 10, "delivery to the late node")

        yield deferToThread(kafka.start)
        yield wait_for(lambda: kafka_state(late), 60, "the late node attaching")
        yield within(a.send(bob, {"seq": 5}))
        yield wait_for(lambda: len(got) == 6, 10, "delivery after attaching")
        assert seqs(got) == list(range(6))
        a.stop()
        b.stop()
    finally:
        yield deferToThread(late.stop)
