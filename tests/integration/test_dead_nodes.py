"""Dead nodes on real twistd nodes, Redis and Kafka: noticed within the TTL,
cleaned up once, their users' messages kept for the reconnect, and no newer
session ever touched.

The nodes use a Redis database of their own, so that only their reapers (not
those of nodes other tests run on database 0) clean up after them, and short
heartbeat settings so that a death is noticed in about a second.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]
from twisted.internet import defer
from twisted.internet.threads import deferToThread

from tests.integration.conftest import Cluster, Services, start_nodes
from tests.integration.support import RawPeer, connect_raw, http_json, wait_for, within
from tests.integration.test_delivery import users
from tests.integration.test_node_store import connect as connect_redis
from wsha import keys, wire
from wsha.localcluster import LocalNode
from wsha.nodes import NodeStore
from wsha.sessions import index_entry
from wsha.topics import node_topic

DATABASE = 14
"""The Redis database of these tests' nodes."""

HEARTBEAT, TTL, SCAN, TOPIC_DELAY = 0.25, 1.0, 0.25, 5.0
FAST = [
    f"--heartbeat-interval={HEARTBEAT}",
    f"--heartbeat-ttl={TTL}",
    f"--reaper-interval={SCAN}",
    f"--dead-topic-delay={TOPIC_DELAY}",
]
NOTICE_BOUND = TTL + SCAN + 2.0
"""A dead node's sessions are offline this long after it died, at the latest."""


def own_database(services: Services) -> Services:
    """``services`` with the Redis URL pointing at this module's database."""
    base = services.redis_url.rsplit("/", 1)[0]
    return Services(f"{base}/{DATABASE}", services.kafka)


def redis_address(services: Services) -> tuple[str, int]:
    """Host and port of the shared Redis."""
    host_port = services.redis_url.split("//", 1)[1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    return host, int(port or 6379)


def nodes(services: Services, count: int) -> Iterator[Cluster]:
    """Run ``count`` nodes; afterwards wake any frozen one and stop them all."""
    cluster = start_nodes(own_database(services), count, FAST)
    yield cluster
    for node in cluster.nodes:
        if node.process is not None and node.process.poll() is None:
            os.kill(node.process.pid, signal.SIGCONT)
        node.stop()


@pytest.fixture
def trio(services: Services) -> Iterator[Cluster]:
    """Three nodes: one to kill, two survivors racing to clean up after it."""
    yield from nodes(services, 3)


@pytest.fixture
def pair(services: Services) -> Iterator[Cluster]:
    """Two nodes."""
    yield from nodes(services, 2)


def freeze(node: LocalNode, frozen: bool = True) -> None:
    """Stop (SIGSTOP) or resume (SIGCONT) a node's process."""
    assert node.process is not None
    os.kill(node.process.pid, signal.SIGSTOP if frozen else signal.SIGCONT)


@defer.inlineCallbacks
def sessions_of(node: LocalNode, user: str) -> Any:
    """Fire with {session: (online, node, epoch)} from ``node``'s control API."""
    status, info = yield http_json("GET", f"{node.control_url}/v1/users/{user}")
    assert status == 200
    return {
        s["session"]: (s["online"], s["node"], s["epoch"]) for s in info["sessions"]
    }


@defer.inlineCallbacks
def registry_of(node: LocalNode) -> Any:
    """Fire with (ids of registered nodes, ids of dead nodes) as ``node`` lists them."""
    status, listing = yield http_json("GET", f"{node.control_url}/v1/nodes")
    assert status == 200
    return {n["id"]: n for n in listing["nodes"]}, listing["dead"]


@defer.inlineCallbacks
def open_session(cluster: Cluster, node: LocalNode, user: str, session: str) -> Any:
    """Connect ``user``'s ``session`` to ``node``; fire with the peer once welcomed."""
    peer: RawPeer = yield connect_raw(
        f"{node.ws_url}?token={cluster.token(user)}&session={session}"
    )
    yield within(peer.opened)
    yield wait_for(lambda: peer.of_type("welcome"), 10, "welcome")
    return peer


def high_watermark(bootstrap: str, topic: str) -> int:
    """The end offset of ``topic``'s partition (blocking: run it in a thread)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "wsha-tests"})
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        return int(high)
    finally:
        consumer.close()


def topic_exists(bootstrap: str, topic: str) -> bool:
    """Whether the broker has ``topic`` (blocking: run it in a thread)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return topic in admin.list_topics(timeout=10).topics


@defer.inlineCallbacks
def cleanup_record(services: Services, node_id: str) -> Any:
    """Fire with the cleanup record of ``node_id`` in the nodes' database."""
    redis = yield connect_redis(redis_address(services), DATABASE)
    try:
        found = yield NodeStore(redis).cleanup_record(node_id)
    finally:
        yield redis.disconnect()
    return found


@pytest_twisted.inlineCallbacks
def test_killed_node_is_cleaned_up_once_and_its_messages_wait_in_the_inbox(
    trio: Cluster, services: Services
) -> Any:
    """Bob is on node 3 when it is SIGKILLed. Within TTL + scan interval (plus a
    margin) his session is offline and node 3 has left the registry, cleaned up
    by exactly one of the two survivors. Messages sent meanwhile are stored and
    reach Bob exactly once, in order, when he reconnects to a survivor; none is
    notified to the dead node's topic after the cleanup, and that topic is
    deleted after its delay."""
    from twisted.internet import reactor

    first, second, doomed = trio.nodes
    (bob,) = users("bob")
    yield open_session(trio, doomed, bob, "phone")
    registered, _ = yield registry_of(first)
    assert set(registered) == {n.node_id for n in trio.nodes}
    assert registered[doomed.node_id]["state"] == "ready"
    assert registered[doomed.node_id]["url"] == doomed.ws_url
    yield wait_for(
        lambda: registry_of(first).addCallback(
            lambda r: r[0][doomed.node_id]["connections"] == 1
        ),
        5,
        "the connection count in the registration",
    )

    killed_at = reactor.seconds()
    doomed.kill()
    status, early = yield http_json(
        "POST",
        f"{first.control_url}/v1/send",
        {"to": bob, "id": "m-1", "body": {"seq": 1}},
    )
    assert status == 200 and early["duplicate"] is False

    yield wait_for(
        lambda: sessions_of(first, bob).addCallback(
            lambda s: s["phone"][:2] == (False, None)
        ),
        NOTICE_BOUND,
        "Bob's session to go offline",
    )
    took = reactor.seconds() - killed_at
    print(f"\nsessions of the killed node offline after {took:.2f}s")
    record = yield cleanup_record(services, doomed.node_id)
    assert record["state"] == "done"
    assert record["runs"] == "1" and record["sessions"] == "1"
    assert record["by"] in (first.node_id, second.node_id)
    for survivor in (first, second):
        registered, dead = yield registry_of(survivor)
        assert doomed.node_id not in registered
        # The reaper that cleaned up knows it as dead; the other may never have
        # seen it expire, and to it the node is simply gone.
        assert doomed.node_id in dead or survivor.node_id != record["by"]

    topic = node_topic(doomed.node_id)
    before = yield deferToThread(high_watermark, services.kafka, topic)
    status, late = yield http_json(
        "POST",
        f"{second.control_url}/v1/send",
        {"to": bob, "id": "m-2", "body": {"seq": 2}},
    )
    assert status == 200

    again = yield open_session(trio, first, bob, "phone")
    welcome = again.of_type("welcome")[0]
    assert welcome["resumed"] is True and welcome["replayed"] == 2
    yield http_json(
        "POST",
        f"{second.control_url}/v1/send",
        {"to": bob, "id": "m-3", "body": {"seq": 3}},
    )
    yield wait_for(lambda: len(again.of_type("message")) >= 3, 10, "3 messages")
    got = again.of_type("message")
    assert [m["body"]["seq"] for m in got] == [1, 2, 3]
    assert [m["id"] for m in got[:2]] == [early["inbox"], late["inbox"]]
    after = yield deferToThread(high_watermark, services.kafka, topic)
    assert after == before

    where = yield sessions_of(second, bob)
    assert where["phone"] == (True, first.node_id, welcome["epoch"])
    yield wait_for(
        lambda: deferToThread(topic_exists, services.kafka, topic).addCallback(
            lambda exists: not exists
        ),
        TOPIC_DELAY + NOTICE_BOUND + 10,
        "the dead node's topic to be deleted",
    )
    again.protocol.sendClose(1000)
    yield within(again.closed)


@pytest_twisted.inlineCallbacks
def test_late_cleanup_leaves_a_session_that_moved_to_a_live_node(
    pair: Cluster, services: Services
) -> Any:
    """Bob's phone moves from node 2 to node 1 while node 2 is frozen (so node 2
    neither closes nor releases it, and its index still names it); node 2 then
    dies. The cleanup runs, finds the session at a newer epoch on node 1, and
    leaves it online there, its connection open."""
    survivor, doomed = pair.nodes
    (bob,) = users("bob")
    old = yield open_session(pair, doomed, bob, "phone")
    old_epoch = old.of_type("welcome")[0]["epoch"]

    freeze(doomed)
    new = yield open_session(pair, survivor, bob, "phone")
    new_epoch = new.of_type("welcome")[0]["epoch"]
    assert new_epoch > old_epoch
    redis = yield connect_redis(redis_address(services), DATABASE)
    try:
        index = yield redis.execute_command(
            "SMEMBERS", keys.node_sessions(doomed.node_id)
        )
    finally:
        yield redis.disconnect()
    assert index_entry(bob, "phone", str(old_epoch)) in index
    doomed.kill()

    yield wait_for(
        lambda: cleanup_record(services, doomed.node_id).addCallback(
            lambda r: r.get("state") == "done"
        ),
        NOTICE_BOUND,
        "the cleanup of the dead node",
    )
    record = yield cleanup_record(services, doomed.node_id)
    assert record["sessions"] == "0" and record["runs"] == "1"
    where = yield sessions_of(survivor, bob)
    assert where["phone"] == (True, survivor.node_id, new_epoch)
    assert new.close_code is None
    new.protocol.sendClose(1000)
    yield within(new.closed)


@pytest_twisted.inlineCallbacks
def test_node_frozen_past_its_ttl_is_reaped_and_closes_its_connections(
    pair: Cluster, services: Services
) -> Any:
    """Node 2 freezes for longer than its TTL: the survivor marks Carol's session
    offline. When node 2 wakes it learns it was declared dead, closes Carol's
    connection with 1012 (reconnect at once), and registers again; Carol can
    connect to it and is online there."""
    survivor, frozen = pair.nodes
    (carol,) = users("carol")
    peer = yield open_session(pair, frozen, carol, "laptop")

    freeze(frozen)
    yield wait_for(
        lambda: sessions_of(survivor, carol).addCallback(
            lambda s: s["laptop"][:2] == (False, None)
        ),
        NOTICE_BOUND,
        "Carol's session to go offline",
    )
    freeze(frozen, False)
    code, _ = yield within(peer.closed, 10)
    assert code == wire.CLOSE_RESTARTING

    yield wait_for(
        lambda: registry_of(survivor).addCallback(lambda r: frozen.node_id in r[0]),
        5,
        "the woken node to be registered again",
    )
    back = yield open_session(pair, frozen, carol, "laptop")
    where = yield sessions_of(survivor, carol)
    assert where["laptop"][:2] == (True, frozen.node_id)
    back.protocol.sendClose(1000)
    yield within(back.closed)


@pytest_twisted.inlineCallbacks
def test_clean_stop_deregisters_and_marks_its_sessions_offline(
    pair: Cluster, services: Services
) -> Any:
    """A node stopped with SIGTERM leaves the registry at once (not as a dead
    node), its sessions are offline, and its topic is due for deletion."""
    survivor, leaving = pair.nodes
    (dave,) = users("dave")
    yield open_session(pair, leaving, dave, "phone")

    yield deferToThread(leaving.stop)
    assert leaving.process is not None and leaving.process.poll() is not None
    registered, dead = yield registry_of(survivor)
    assert leaving.node_id not in registered and leaving.node_id not in dead
    where = yield sessions_of(survivor, dave)
    assert where["phone"][:2] == (False, None)
    redis = yield connect_redis(redis_address(services), DATABASE)
    try:
        due = yield redis.execute_command(
            "ZSCORE", keys.retired_topics(), leaving.node_id
        )
    finally:
        yield redis.disconnect()
    assert due is not None
