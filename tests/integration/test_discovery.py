"""The discovery companion keeps a real HAProxy in step with real nodes.

Nodes join at run time and take new clients once healthy, without a reload and
without cutting a connection; a node stopped cleanly leaves the server list;
version labels weigh canaries.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.threads import deferToThread

from tests.integration.conftest import Services
from tests.integration.lb import LocalHAProxy
from tests.integration.private_cluster import (
    PrivateRegistry,
    private_registry,
    running_companion,
    wait_gone,
    wait_serving,
)
from tests.integration.support import RawPeer, connect_raw, wait_for, within


@pytest.fixture
def registry(services: Services) -> Iterator[PrivateRegistry]:
    """Nodes on a Redis of their own; stopped after the test."""
    with private_registry(services) as running:
        yield running


@defer.inlineCallbacks
def open_clients(balancer: LocalHAProxy, registry: PrivateRegistry, count: int) -> Any:
    """Open ``count`` clients through ``balancer``, each welcomed before the next
    (so that leastconn sees the earlier ones); fires with the peers."""
    peers = []
    for _ in range(count):
        user = f"disc-{secrets.token_hex(4)}"
        url = f"{balancer.ws_url}?token={registry.token(user)}&session=dev-1"
        peer: RawPeer = yield within(connect_raw(url))
        yield within(peer.opened)
        yield wait_for(lambda p=peer: p.of_type("welcome"), 10, "welcome")
        peers.append(peer)
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


@pytest_twisted.inlineCallbacks
def test_nodes_join_and_leave_haproxy_through_the_registry(
    registry: PrivateRegistry, haproxy: LocalHAProxy
) -> Any:
    """Two nodes become servers by themselves; a third started at run time takes
    the next clients without any open connection being cut; a node stopped
    cleanly leaves the server list, and its slot is freed."""
    first = yield deferToThread(registry.start_node)
    second = yield deferToThread(registry.start_node)
    with running_companion(registry, haproxy) as companion:
        for node in (first, second):
            yield deferToThread(wait_serving, haproxy, node)
        before = yield open_clients(haproxy, registry, 4)
        assert sorted(map(node_of, before)) == sorted(
            [first.node_id] * 2 + [second.node_id] * 2
        )

        third = yield deferToThread(registry.start_node)
        yield deferToThread(wait_serving, haproxy, third)
        after = yield open_clients(haproxy, registry, 2)

        assert [node_of(p) for p in after] == [third.node_id] * 2
        assert not any(p.closed.called for p in before)
        front = yield deferToThread(haproxy.counters, "wsha", "FRONTEND")
        assert front.responses_5xx == 0 and front.request_errors == 0

        yield deferToThread(first.stop)
        yield deferToThread(wait_gone, haproxy, first)
        survivors = [p for p in before + after if node_of(p) != first.node_id]
        assert not any(p.closed.called for p in survivors)

        changes = companion.changes()
        added = {e["node"] for e in changes if e["action"] == "add"}
        removed = {e["address"] for e in changes if e["action"] == "remove"}
        assert added == {first.node_id, second.node_id, third.node_id}
        assert removed == {f"127.0.0.1:{first.ws_port}"}
        yield close_all(before + after)
    assert companion.stop() == 0


@pytest_twisted.inlineCallbacks
def test_canary_label_gets_its_share_of_new_connections(
    registry: PrivateRegistry, haproxy: LocalHAProxy
) -> Any:
    """With ``--canary green=25`` the green node weighs a third of the blue one,
    and of eight clients opened one after another about a quarter land on it."""
    blue = yield deferToThread(registry.start_node, "--version-label", "blue")
    green = yield deferToThread(registry.start_node, "--version-label", "green")
    with running_companion(registry, haproxy, "--canary", "green=25"):
        for node in (blue, green):
            yield deferToThread(wait_serving, haproxy, node)
        slots = yield deferToThread(haproxy.api.slots)
        weights = {s.port: s.weight for s in slots if not s.free}
        assert weights == {blue.ws_port: 256, green.ws_port: 85}

        peers = yield open_clients(haproxy, registry, 8)
        landed = [node_of(p) for p in peers]
        print(f"green took {landed.count(green.node_id)} of 8")
        assert 1 <= landed.count(green.node_id) <= 3
        yield close_all(peers)
