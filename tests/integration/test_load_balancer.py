"""Real HAProxy (deploy/haproxy/wsha.cfg) in front of real nodes.

Health-check bounds these tests hold HAProxy to, from the config (checks every
1 s, 1 s timeout, down after 2 failures, 0.5 s apart once one failed): a node
whose ``/readyz`` fails is out within about 1.5 s, a hung one within about
3.5 s (5 s asserted, for scheduling slack); a connect that is refused marks the
node down at once and is retried on another node.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest_twisted
from twisted.internet import defer
from twisted.internet.threads import deferToThread

from tests.integration.conftest import REPO, RUN_DIR, Cluster, Services
from tests.integration.lb import LocalHAProxy
from tests.integration.support import RawPeer, connect_raw, http_json, wait_for, within
from wsha.localcluster import LocalNode, free_port, http_status

READYZ_BOUND = 5.0


@defer.inlineCallbacks
def open_via(balancer: LocalHAProxy, cluster: Cluster) -> Any:
    """Open a raw WebSocket through ``balancer``; fires with the peer once welcomed."""
    user = f"lb-{secrets.token_hex(4)}"
    url = f"{balancer.ws_url}?token={cluster.token(user)}&session=dev-1"
    peer: RawPeer = yield within(connect_raw(url))
    yield within(peer.opened)
    yield wait_for(lambda: peer.of_type("welcome"), 10, "welcome via haproxy")
    return peer


@defer.inlineCallbacks
def open_several(balancer: LocalHAProxy, cluster: Cluster, count: int) -> Any:
    """Open ``count`` WebSockets one after the other (each welcomed before the
    next starts, so leastconn sees the earlier ones); fires with the peers."""
    peers = []
    for _ in range(count):
        peers.append((yield open_via(balancer, cluster)))
    return peers


def node_of(peer: RawPeer) -> str:
    """The id of the node that welcomed ``peer``."""
    return str(peer.of_type("welcome")[0]["node"])


@defer.inlineCallbacks
def close_all(peers: list[RawPeer]) -> Any:
    """Close ``peers`` and wait until each is closed."""
    for peer in peers:
        if not peer.closed.called and peer.protocol is not None:
            peer.protocol.sendClose(1000)
    yield within(defer.DeferredList([p.closed for p in peers], consumeErrors=True))


def in_rotation(balancer: LocalHAProxy, *nodes: LocalNode) -> None:
    """Add ``nodes`` to ``balancer`` and wait until each is up (blocking)."""
    for node in nodes:
        balancer.add(node)
    for node in nodes:
        balancer.wait_state(node, "up")


def assert_no_refusal(balancer: LocalHAProxy) -> None:
    """HAProxy answered no client with an error of its own (blocking)."""
    front = balancer.counters("wsha", "FRONTEND")
    assert front.responses_5xx == 0, balancer.log_tail()
    assert front.request_errors == 0, balancer.log_tail()
    assert front.denied_requests == 0, balancer.log_tail()


@contextmanager
def node_on_own_redis(
    services: Services, secret: str
) -> Iterator[tuple[LocalNode, dict[str, str]]]:
    """A node whose Redis is a private one on a free port; yields it and the
    environment that points ``scripts/redis`` at that Redis."""
    env = dict(os.environ, WSHA_REDIS_PORT=str(free_port()))
    subprocess.run([str(REPO / "scripts" / "redis"), "start"], env=env, check=True)
    node = LocalNode(
        f"it-lb-{secrets.token_hex(3)}",
        f"redis://127.0.0.1:{env['WSHA_REDIS_PORT']}/0",
        services.kafka,
        secret,
        RUN_DIR,
    )
    try:
        node.start()
        node.wait_ready()
        yield node, env
    finally:
        node.kill()
        subprocess.run([str(REPO / "scripts" / "redis"), "stop"], env=env, check=False)
        shutil.rmtree(REPO / ".run" / f"redis-{env['WSHA_REDIS_PORT']}", True)


@pytest_twisted.inlineCallbacks
def test_client_reaches_a_node_through_haproxy(
    cluster: Cluster, haproxy: LocalHAProxy
) -> Any:
    """A client connecting to HAProxy is welcomed by one of the nodes in rotation,
    and HAProxy counts the session against that node."""
    yield deferToThread(in_rotation, haproxy, *cluster.nodes)

    peer = yield open_via(haproxy, cluster)

    ids = [n.node_id for n in cluster.nodes]
    assert node_of(peer) in ids
    slot = yield deferToThread(haproxy.slot_of, cluster.nodes[ids.index(node_of(peer))])
    row = yield deferToThread(haproxy.counters, "wsha_nodes", slot.name)
    assert row.current_sessions == 1 and row.total_sessions == 1
    yield close_all([peer])
    yield deferToThread(assert_no_refusal, haproxy)


@pytest_twisted.inlineCallbacks
def test_leastconn_spreads_clients_over_both_nodes(
    cluster: Cluster, haproxy: LocalHAProxy
) -> Any:
    """Two clients open at once land on different nodes; four land two and two."""
    yield deferToThread(in_rotation, haproxy, *cluster.nodes)

    peers = yield open_several(haproxy, cluster, 4)

    landed = [node_of(p) for p in peers]
    assert landed[0] != landed[1]
    assert sorted(landed) == sorted(n.node_id for n in cluster.nodes for _ in (1, 2))
    yield close_all(peers)
    yield deferToThread(assert_no_refusal, haproxy)


@pytest_twisted.inlineCallbacks
def test_node_failing_readyz_is_taken_out(
    services: Services, cluster: Cluster, haproxy: LocalHAProxy
) -> Any:
    """A node whose /readyz turns 503 (its Redis stopped) is marked down within the
    bound and new clients go to the other node; it comes back when ready again."""
    with node_on_own_redis(services, cluster.secret) as (failing, redis_env):
        healthy = cluster.nodes[0]
        yield deferToThread(in_rotation, haproxy, failing, healthy)

        stop_redis = [str(REPO / "scripts" / "redis"), "stop"]
        yield deferToThread(subprocess.run, stop_redis, env=redis_env, check=True)
        took = yield deferToThread(haproxy.wait_state, failing, "down", READYZ_BOUND)
        print(f"node with failing /readyz marked down after {took:.2f}s")

        peers = yield open_several(haproxy, cluster, 4)
        assert {node_of(p) for p in peers} == {healthy.node_id}

        start_redis = [str(REPO / "scripts" / "redis"), "start"]
        yield deferToThread(subprocess.run, start_redis, env=redis_env, check=True)
        yield deferToThread(haproxy.wait_state, failing, "up", 15)
        yield close_all(peers)
    yield deferToThread(assert_no_refusal, haproxy)


@pytest_twisted.inlineCallbacks
def test_hung_node_is_taken_out(cluster: Cluster, haproxy: LocalHAProxy) -> Any:
    """A node that stops answering (SIGSTOP: its /readyz times out) is marked down
    within the bound, new clients go to the other node, and it returns after
    SIGCONT."""
    healthy, hung = cluster.nodes
    yield deferToThread(in_rotation, haproxy, healthy, hung)
    assert hung.process is not None

    peers: list[RawPeer] = []
    hung.process.send_signal(signal.SIGSTOP)
    try:
        took = yield deferToThread(haproxy.wait_state, hung, "down", READYZ_BOUND)
        print(f"hung node marked down after {took:.2f}s")
        peers = yield open_several(haproxy, cluster, 3)
        assert {node_of(p) for p in peers} == {healthy.node_id}
    finally:
        hung.process.send_signal(signal.SIGCONT)

    yield deferToThread(haproxy.wait_state, hung, "up", 10)
    yield close_all(peers)
    yield deferToThread(assert_no_refusal, haproxy)


@pytest_twisted.inlineCallbacks
def test_killed_node_refuses_no_client(
    services: Services, cluster: Cluster, haproxy: LocalHAProxy
) -> Any:
    """Right after a node is killed (SIGKILL), every new client is still welcomed:
    a refused connect is retried on the other node, the dead node is marked down
    at once, and HAProxy's counters show no error answered to a client."""
    doomed = LocalNode(
        f"it-lb-{secrets.token_hex(3)}",
        services.redis_url,
        services.kafka,
        cluster.secret,
        RUN_DIR,
    )
    doomed.start()
    try:
        yield deferToThread(doomed.wait_ready)
        # The doomed node takes the first slot, so it is tried first.
        yield deferToThread(in_rotation, haproxy, doomed, cluster.nodes[0])

        doomed.kill()
        peers = yield defer.gatherResults(
            [open_via(haproxy, cluster) for _ in range(6)], consumeErrors=True
        )
        assert {node_of(p) for p in peers} == {cluster.nodes[0].node_id}
        took = yield deferToThread(haproxy.wait_state, doomed, "down", 3)
        print(f"killed node marked down {took:.2f}s after the clients connected")
        yield close_all(peers)
    finally:
        doomed.kill()

    yield deferToThread(assert_no_refusal, haproxy)
    slot = yield deferToThread(haproxy.slot_of, doomed)
    row = yield deferToThread(haproxy.counters, "wsha_nodes", slot.name)
    # A refused connect shows as a redispatch (retried on another node), not
    # as an error; none if the health check noticed the death first.
    print(f"connects to the killed node redispatched: {row.redispatches}")


@pytest_twisted.inlineCallbacks
def test_removed_node_gets_no_new_clients(
    cluster: Cluster, haproxy: LocalHAProxy
) -> Any:
    """Removing a node through the runtime API frees its slot and sends it no new
    client, while the connection it already serves stays open."""
    yield deferToThread(in_rotation, haproxy, *cluster.nodes)
    first = yield open_via(haproxy, cluster)
    removed = next(n for n in cluster.nodes if n.node_id == node_of(first))
    kept = next(n for n in cluster.nodes if n is not removed)

    slot = yield deferToThread(haproxy.slot_of, removed)
    freed = yield deferToThread(haproxy.api.remove, slot.name)
    assert freed.free and freed.name == slot.name

    peers = yield open_several(haproxy, cluster, 3)
    assert {node_of(p) for p in peers} == {kept.node_id}
    assert not first.closed.called
    yield close_all([first, *peers])
    yield deferToThread(assert_no_refusal, haproxy)


@pytest_twisted.inlineCallbacks
def test_no_node_up_answers_retryable_503(haproxy: LocalHAProxy) -> Any:
    """With no node in rotation HAProxy answers 503 with the gateway's retryable
    JSON error, and its own health URL says it cannot serve."""
    status, body = yield http_json("GET", f"http://127.0.0.1:{haproxy.port}/ws")
    assert status == 503
    assert body["error"] == "unavailable" and body["retry"] is True

    health = yield deferToThread(
        http_status, f"http://127.0.0.1:{haproxy.port}/lb/healthz"
    )
    assert health == 503


def test_script_adds_lists_and_removes_nodes(
    cluster: Cluster, haproxy: LocalHAProxy
) -> None:
    """scripts/haproxy add/servers/remove manage slots by node id, idempotently."""
    node = cluster.nodes[0]
    ports = (str(node.ws_port), str(node.control_port))

    added = haproxy.script("add", node.node_id, *ports)
    again = haproxy.script("add", node.node_id, *ports)
    assert added.returncode == 0 and again.returncode == 0, added.stderr
    assert "node1" in added.stdout and "node1" in again.stdout
    haproxy.wait_state(node, "up")

    servers = haproxy.script("servers")
    assert servers.returncode == 0
    [row] = [line for line in servers.stdout.splitlines() if node.node_id in line]
    assert row.split()[:3] == ["node1", "up", f"127.0.0.1:{node.ws_port}"]

    removed = haproxy.script("remove", node.node_id)
    assert removed.returncode == 0 and "removed from node1" in removed.stdout
    assert haproxy.api.find("node1").free
    gone = haproxy.script("remove", node.node_id)
    assert gone.returncode == 0 and "not in rotation" in gone.stdout

    assert haproxy.script("status").returncode == 0
    assert "already running" in haproxy.script("start").stdout
