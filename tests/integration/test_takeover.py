"""Session takeover with fencing, and a network switch mid-stream, on two nodes."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import defer, task

from tests.integration.conftest import Cluster
from tests.integration.support import connect_raw, http_json, wait_for, within
from tests.integration.test_delivery import client, seqs, users
from wsha import wire


@pytest_twisted.inlineCallbacks
def test_newer_connection_on_another_node_takes_over_with_4001(cluster: Cluster) -> Any:
    """A session reconnecting on node 2 while still open on node 1 gets a newer
    epoch; node 1 closes the old connection with 4001, and that late close
    leaves node 2's registration in place."""
    (bob,) = users("bob")
    url = "{}?token={}&session=phone"
    old = yield connect_raw(url.format(cluster.nodes[0].ws_url, cluster.token(bob)))
    yield within(old.opened)
    yield wait_for(lambda: old.of_type("welcome"), 10, "first welcome")

    new = yield connect_raw(url.format(cluster.nodes[1].ws_url, cluster.token(bob)))
    yield within(new.opened)
    yield wait_for(lambda: new.of_type("welcome"), 10, "second welcome")
    code, _ = yield within(old.closed)
    assert code == wire.CLOSE_TAKEN_OVER
    assert new.of_type("welcome")[0]["epoch"] > old.of_type("welcome")[0]["epoch"]
    assert new.of_type("welcome")[0]["resumed"] is True

    status, info = yield http_json(
        "GET", f"{cluster.nodes[0].control_url}/v1/users/{bob}"
    )
    assert status == 200
    (phone,) = info["sessions"]
    assert phone["online"] is True and phone["node"] == cluster.nodes[1].node_id
    assert phone["epoch"] == new.of_type("welcome")[0]["epoch"]
    assert new.close_code is None
    new.protocol.sendClose(1000)
    yield within(new.closed)


@pytest_twisted.inlineCallbacks
def test_same_node_reconnect_takes_over_the_old_connection(cluster: Cluster) -> Any:
    """Two connections of one session on the same node: the older gets 4001."""
    (bob,) = users("bob")
    url = f"{cluster.nodes[0].ws_url}?token={cluster.token(bob)}&session=phone"
    old = yield connect_raw(url)
    yield wait_for(lambda: old.of_type("welcome"), 10, "first welcome")
    new = yield connect_raw(url)
    yield wait_for(lambda: new.of_type("welcome"), 10, "second welcome")
    code, _ = yield within(old.closed)
    assert code == wire.CLOSE_TAKEN_OVER
    assert new.close_code is None
    new.protocol.sendClose(1000)
    yield within(new.closed)


@pytest_twisted.inlineCallbacks
def test_network_switch_mid_stream_loses_and_duplicates_nothing(
    cluster: Cluster,
) -> Any:
    """B on node 2 loses its link silently half-way through 400 messages and
    reconnects to node 1 from 127.0.0.2: it gets all 400, in order, once, and
    the session is registered on node 1 with the new connection's epoch."""
    from twisted.internet import reactor

    alice, bob = users("alice", "bob")
    got: list[Any] = []
    a = client(cluster, 0, alice, "laptop", [])
    b = client(cluster, 1, bob, "phone", got)
    try:
        yield within(defer.gatherResults([a.when_connected(), b.when_connected()]))
        acks = []
        for i in range(400):
            if i == 200:
                b.url = cluster.nodes[0].ws_url
                b.switch_network("127.0.0.2")
            acks.append(a.send(bob, {"seq": i}))
            if i % 20 == 19:
                yield task.deferLater(reactor, 0.005, lambda: None)
        yield within(defer.gatherResults(acks))
        yield wait_for(lambda: len(got) >= 400, 20, "400 messages")
        assert seqs(got) == list(range(400))
        assert b.stats.duplicates_dropped == 0
        assert b.welcome is not None and b.welcome["node"] == cluster.nodes[0].node_id
        _, info = yield http_json(
            "GET", f"{cluster.nodes[1].control_url}/v1/users/{bob}"
        )
        (phone,) = info["sessions"]
        assert phone["node"] == cluster.nodes[0].node_id
        assert phone["epoch"] == b.welcome["epoch"]
    finally:
        a.stop()
        b.stop()
