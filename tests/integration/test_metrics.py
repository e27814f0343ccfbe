"""Metrics and connection log lines on two real nodes, with real traffic.

The nodes log JSON lines (``--log-format json``); ``/metrics`` is scraped
before and after each step, and the change is what is checked, since the
nodes of this module serve every test in it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.request import urlopen

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.threads import deferToThread

from tests.integration.conftest import Cluster, Services, start_nodes
from tests.integration.support import wait_for, within
from tests.integration.test_delivery import client, users
from tests.integration.test_groups import (
    close,
    group_seqs,
    open_session,
    publish_all,
    subscribe,
)
from wsha.localcluster import LocalNode

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def nodes(services: Services) -> Iterator[Cluster]:
    """Two nodes writing JSON log lines."""
    running = start_nodes(services, 2, ["--log-format=json"])
    yield running
    for node in running.nodes:
        node.stop()


def _scrape(url: str) -> Samples:
    with urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(node: LocalNode) -> defer.Deferred[Samples]:
    """Fire with every sample of ``node``'s ``/metrics`` (off the reactor)."""
    return deferToThread(_scrape, node.control_url)


def get(samples: Samples, name: str, **labels: str) -> float:
    """The value of one sample (0 if the node has not shown it yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over every sample carrying ``labels`` (and others)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


@defer.inlineCallbacks
def grown(
    node: LocalNode, before: Samples, name: str, amount: float, **labels: str
) -> Any:
    """Wait until ``total(name, labels)`` on ``node`` grew by at least ``amount``;
    fire with the samples then."""
    latest: list[Samples] = [before]

    @defer.inlineCallbacks
    def enough() -> Any:
        latest[0] = yield scrape(node)
        grew = total(latest[0], name, **labels) - total(before, name, **labels)
        return grew >= amount

    yield wait_for(enough, 20, f"{name}{labels} to grow by {amount}")
    return latest[0]


def log_lines(node: LocalNode) -> list[dict[str, Any]]:
    """Every line of ``node``'s log, each parsed as JSON (all must parse)."""
    return [json.loads(line) for line in node.log_path.read_text().splitlines()]


def connection_lines(node: LocalNode, user: str) -> list[dict[str, Any]]:
    """``node``'s open, takeover and close lines of ``user``."""
    return [
        line
        for line in log_lines(node)
        if line.get("namespace") == "wsha.connections" and line.get("user") == user
    ]


@pytest_twisted.inlineCallbacks
def test_direct_messages_are_counted_and_timed_up_to_the_clients_ack(
    nodes: Cluster,
) -> Any:
    """Alice on node 1 sends 20 messages to Bob on node 2, and one again (a
    retry): node 1 counts 20 in and one duplicate; node 2 counts 20 out,
    times 20 writes and, once Bob's client acknowledged them, 20 deliveries
    up to the ack; both time their Redis commands and node 1 its Kafka
    notices."""
    alice, bob = users("alice", "bob")
    sender_node, receiver_node = nodes.nodes
    got: list[Any] = []
    a = client(nodes, 0, alice, "laptop", [])
    b = client(nodes, 1, bob, "phone", got)
    try:
        yield within(defer.gatherResults([a.when_connected(), b.when_connected()]))
        sent_before = yield scrape(sender_node)
        got_before = yield scrape(receiver_node)

        acks = yield within(
            defer.gatherResults([a.send(bob, {"seq": i}) for i in range(20)])
        )
        again = yield within(a.send(bob, {"seq": 0}, client_id=acks[0]["id"]))
        assert again["duplicate"] is True
        yield wait_for(lambda: len(got) >= 20, 15, "20 messages at Bob")
        got_after = yield grown(
            receiver_node,
            got_before,
            "wsha_delivery_ack_seconds_count",
            20,
            **{"class": "direct"},
        )
        sent_after = yield scrape(sender_node)
    finally:
        a.stop()
        b.stop()

    def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    direct = {"class": "direct"}
    assert delta(sent_after, sent_before, "wsha_messages_in_total", **direct) == 20
    assert get(sent_after, "wsha_messages_in_total", route="websocket", **direct) >= 20
    assert delta(sent_after, sent_before, "wsha_duplicates_suppressed_total") == 1
    assert delta(got_after, got_before, "wsha_messages_out_total", **direct) == 20
    assert (
        delta(got_after, got_before, "wsha_delivery_write_seconds_count", **direct)
        == 20
    )
    # Every message was accepted while Bob was connected, and acked exactly once.
    assert (
        delta(
            got_after,
            got_before,
            "wsha_delivery_ack_seconds_count",
            when="live",
            **direct,
        )
        == 20
    )
    assert (
        delta(got_after, got_before, "wsha_delivery_ack_seconds_sum", **direct) < 20 * 5
    )
    assert delta(sent_after, sent_before, "wsha_redis_command_seconds_count") >= 21
    assert total(sent_after, "wsha_redis_command_seconds_count", command="append.lua")
    assert total(sent_after, "wsha_kafka_delivery_seconds_count") >= 1
    assert get(got_after, "wsha_node_state", state="ready") == 1
    assert get(got_after, "wsha_redis_available") == 1


@pytest_twisted.inlineCallbacks
def test_group_messages_are_timed_to_the_group_ack(nodes: Cluster) -> Any:
    """Ten publishes on node 1 reach a member on node 2, who acknowledges the
    last: node 1 counts 10 group messages in, node 2 ten out and ten timed to
    the ack."""
    alice, bob = users("alice", "bob")
    (room,) = users("room")
    a = yield open_session(nodes, 0, alice, "laptop")
    b = yield open_session(nodes, 1, bob, "phone")
    yield subscribe(a, room)
    yield subscribe(b, room)
    sent_before = yield scrape(nodes.nodes[0])
    got_before = yield scrape(nodes.nodes[1])

    publish_all(a, room, 0, 10)
    yield wait_for(lambda: len(group_seqs(b, room)) == 10, 15, "10 group messages")
    last = b.of_type("group_message")[-1]["id"]
    b.send_json({"type": "ack", "group": room, "upto": last})
    got_after = yield grown(
        nodes.nodes[1],
        got_before,
        "wsha_delivery_ack_seconds_count",
        10,
        **{"class": "group"},
    )
    sent_after = yield scrape(nodes.nodes[0])
    yield close(a, b)

    group = {"class": "group"}
    assert (
        total(sent_after, "wsha_messages_in_total", **group)
        - total(sent_before, "wsha_messages_in_total", **group)
        == 10
    )
    assert (
        total(got_after, "wsha_messages_out_total", **group)
        - total(got_before, "wsha_messages_out_total", **group)
        == 10
    )
    assert (
        total(got_after, "wsha_delivery_ack_seconds_count", **group)
        - total(got_before, "wsha_delivery_ack_seconds_count", **group)
        == 10
    )


@pytest_twisted.inlineCallbacks
def test_connections_takeovers_and_their_log_lines(nodes: Cluster) -> Any:
    """Carol connects on node 1, then the same session on node 2 takes over:
    node 1 counts a takeover and a 4001 close by the server, node 2 an
    honoured resume; both logs (JSON lines, every one parseable) hold her
    open, takeover and close lines with user, session, node and the close
    code; a clean client close is logged as by the client with 1000."""
    (carol,) = users("carol")
    first_before = yield scrape(nodes.nodes[0])
    second_before = yield scrape(nodes.nodes[1])

    first = yield open_session(nodes, 0, carol, "tablet")
    second = yield open_session(nodes, 1, carol, "tablet")
    yield within(first.closed)
    assert first.close_code == 4001
    yield close(second)
    first_after = yield grown(
        nodes.nodes[0],
        first_before,
        "wsha_connections_closed_total",
        1,
        code="4001",
        by="server",
    )
    second_after = yield grown(
        nodes.nodes[1],
        second_before,
        "wsha_connections_closed_total",
        1,
        code="1000",
        by="client",
    )

    assert (
        total(first_after, "wsha_takeovers_total")
        - total(first_before, "wsha_takeovers_total")
        == 1
    )
    resumed = {"class": "direct", "outcome": "honoured"}
    assert (
        total(second_after, "wsha_resumes_total", **resumed)
        - total(second_before, "wsha_resumes_total", **resumed)
        == 1
    )
    assert get(second_after, "wsha_connections_opened_total") >= 1

    def fields(line: dict[str, Any]) -> tuple[Any, ...]:
        return (
            line["connection"],
            line["user"],
            line["session"],
            line["node"],
            line.get("code"),
            line.get("by"),
        )

    node1, node2 = (n.node_id for n in nodes.nodes)
    lines = yield wait_for(
        lambda: (
            len(connection_lines(nodes.nodes[0], carol)) >= 3
            and len(connection_lines(nodes.nodes[1], carol)) >= 2
        ),
        10,
        "carol's connection lines",
    )
    assert lines
    assert [fields(line) for line in connection_lines(nodes.nodes[0], carol)] == [
        ("open", carol, "tablet", node1, None, None),
        ("takeover", carol, "tablet", node1, None, None),
        ("close", carol, "tablet", node1, 4001, "server"),
    ]
    assert [fields(line) for line in connection_lines(nodes.nodes[1], carol)] == [
        ("open", carol, "tablet", node2, None, None),
        ("close", carol, "tablet", node2, 1000, "client"),
    ]
    opened = connection_lines(nodes.nodes[1], carol)[0]
    assert opened["level"] == "info" and opened["resumed"] is True
    assert isinstance(opened["epoch"], int)


@pytest_twisted.inlineCallbacks
def test_kafka_consumer_lag_is_measured(nodes: Cluster) -> Any:
    """An idle node reports its consumer lag on both its topics; its own
    topic is read to the end."""
    node = nodes.nodes[0]

    @defer.inlineCallbacks
    def measured() -> Any:
        samples = yield scrape(node)
        keys = {
            ("wsha_kafka_consumer_lag", frozenset({("topic", t)}))
            for t in ("node", "broadcast")
        }
        return samples if keys <= set(samples) else None

    samples = yield wait_for(measured, 10, "the consumer lag gauges")
    assert get(samples, "wsha_kafka_consumer_lag", topic="node") == 0
    # Other nodes may publish broadcasts at any time: only its presence is sure.
    assert get(samples, "wsha_kafka_consumer_lag", topic="broadcast") >= 0
    assert get(samples, "wsha_kafka_healthy") == 1
