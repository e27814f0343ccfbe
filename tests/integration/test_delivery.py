"""Direct messages between users on two real nodes, on real Redis and Kafka."""

from __future__ import annotations

import secrets
from typing import Any

import pytest_twisted
from twisted.internet import defer

from tests.integration.conftest import Cluster
from tests.integration.support import connect_raw, http_json, wait_for, within
from wsha.client import GatewayClient


def users(*names: str) -> list[str]:
    """Fresh user ids, so tests never see each other's inboxes."""
    tag = secrets.token_hex(4)
    return [f"{name}-{tag}" for name in names]


def client(
    cluster: Cluster, node: int, user: str, session: str, got: list[Any]
) -> GatewayClient:
    """A started client of ``user`` on node ``node`` appending messages to ``got``."""
    from twisted.internet import reactor

    c = GatewayClient(
        reactor,
        cluster.nodes[node].ws_url,
        lambda: cluster.token(user),
        session,
        got.append,
    )
    c.start()
    return c


def seqs(got: list[dict[str, Any]]) -> list[int]:
    """The ``seq`` of each received message body, in arrival order."""
    return [m["body"]["seq"] for m in got]


@pytest_twisted.inlineCallbacks
def test_cross_node_messages_arrive_in_order_once(cluster: Cluster) -> Any:
    """A on node 1 sends 200 messages to B on node 2: all arrive, in order, once,
    each acked with its inbox id, and the inbox ids increase."""
    alice, bob = users("alice", "bob")
    got_a: list[Any] = []
    got_b: list[Any] = []
    a = client(cluster, 0, alice, "laptop", got_a)
    b = client(cluster, 1, bob, "phone", got_b)
    try:
        welcome = yield within(b.when_connected())
        assert welcome["node"] == cluster.nodes[1].node_id
        assert welcome["resumed"] is False and welcome["replayed"] == 0
        yield within(a.when_connected())

        acks = yield within(
            defer.gatherResults([a.send(bob, {"seq": i}) for i in range(200)])
        )
        assert all(ack["duplicate"] is False for ack in acks)
        yield wait_for(lambda: len(got_b) >= 200, 15, "200 messages at B")

        assert seqs(got_b) == list(range(200))
        assert [m["id"] for m in got_b] == [ack["inbox"] for ack in acks]
        assert all(m["from"] == alice for m in got_b)
        assert b.stats.duplicates_dropped == 0
        assert got_a == []
    finally:
        a.stop()
        b.stop()


@pytest_twisted.inlineCallbacks
def test_message_to_offline_user_is_stored_and_replayed_on_connect(
    cluster: Cluster,
) -> Any:
    """Messages to a user who never connected (via a client and via the control
    API) are kept and replayed in order when the user's first session opens."""
    alice, carol = users("alice", "carol")
    a = client(cluster, 0, alice, "laptop", [])
    try:
        yield within(a.when_connected())
        for i in range(5):
            yield within(a.send(carol, {"seq": i}))
        status, reply = yield http_json(
            "POST",
            f"{cluster.nodes[1].control_url}/v1/send",
            {"to": carol, "from": "ops", "id": "notice-1", "body": {"seq": 5}},
        )
        assert status == 200 and reply["duplicate"] is False

        got: list[Any] = []
        c = client(cluster, 1, carol, "tablet", got)
        welcome = yield within(c.when_connected())
        assert welcome["replayed"] == 6
        yield wait_for(lambda: len(got) >= 6, 10, "6 replayed messages")
        assert seqs(got) == list(range(6))
        assert got[-1]["from"] == "ops" and got[-1]["id"] == reply["inbox"]
        c.stop()
    finally:
        a.stop()


@pytest_twisted.inlineCallbacks
def test_retried_send_with_same_id_is_stored_once(cluster: Cluster) -> Any:
    """Re-sending a client message id (a retry after a reconnect) is acknowledged
    with the original inbox id and delivered once."""
    alice, bob = users("alice", "bob")
    got: list[Any] = []
    a = client(cluster, 0, alice, "laptop", [])
    b = client(cluster, 1, bob, "phone", got)
    try:
        yield within(defer.gatherResults([a.when_connected(), b.when_connected()]))
        first = yield within(a.send(bob, {"seq": 0}, client_id="m-1"))
        again = yield within(a.send(bob, {"seq": 0}, client_id="m-1"))
        yield within(a.send(bob, {"seq": 1}, client_id="m-2"))
        assert first["duplicate"] is False and again["duplicate"] is True
        assert again["inbox"] == first["inbox"]
        yield wait_for(lambda: len(got) >= 2, 10, "2 messages")
        assert seqs(got) == [0, 1]
    finally:
        a.stop()
        b.stop()


@pytest_twisted.inlineCallbacks
def test_every_session_of_a_user_gets_each_message(cluster: Cluster) -> Any:
    """A user with a phone on node 1 and a laptop on node 2 gets every message
    on both."""
    alice, bob = users("alice", "bob")
    phone: list[Any] = []
    laptop: list[Any] = []
    a = client(cluster, 0, alice, "laptop", [])
    b1 = client(cluster, 0, bob, "phone", phone)
    b2 = client(cluster, 1, bob, "laptop", laptop)
    try:
        yield within(defer.gatherResults([c.when_connected() for c in (a, b1, b2)]))
        yield within(defer.gatherResults([a.send(bob, {"seq": i}) for i in range(50)]))
        yield wait_for(
            lambda: len(phone) >= 50 and len(laptop) >= 50, 10, "both devices"
        )
        assert seqs(phone) == seqs(laptop) == list(range(50))

        status, info = yield http_json(
            "GET", f"{cluster.nodes[0].control_url}/v1/users/{bob}"
        )
        assert status == 200 and info["online"] is True
        where = {s["session"]: s["node"] for s in info["sessions"]}
        assert where == {
            "phone": cluster.nodes[0].node_id,
            "laptop": cluster.nodes[1].node_id,
        }
    finally:
        for c in (a, b1, b2):
            c.stop()


@pytest_twisted.inlineCallbacks
def test_resume_after_an_id_replays_exactly_what_followed(cluster: Cluster) -> Any:
    """A client reconnecting with ``after`` gets exactly the messages after that id."""
    alice, bob = users("alice", "bob")
    a = client(cluster, 0, alice, "laptop", [])
    try:
        yield within(a.when_connected())
        acks = yield within(
            defer.gatherResults([a.send(bob, {"seq": i}) for i in range(10)])
        )
        peer = yield connect_raw(
            f"{cluster.nodes[1].ws_url}?token={cluster.token(bob)}&session=phone"
            f"&after={acks[3]['inbox']}"
        )
        yield within(peer.opened)
        yield wait_for(lambda: len(peer.of_type("message")) >= 6, 10, "6 messages")
        welcome = peer.of_type("welcome")[0]
        assert welcome["after"] == acks[3]["inbox"] and welcome["replayed"] == 6
        assert [m["body"]["seq"] for m in peer.of_type("message")] == list(range(4, 10))
        peer.protocol.sendClose(1000)
        yield within(peer.closed)
    finally:
        a.stop()


@pytest_twisted.inlineCallbacks
def test_stored_ack_cursor_resumes_a_client_that_lost_its_own(cluster: Cluster) -> Any:
    """A client that acknowledged up to an id and reconnects without ``after``
    (a reloaded page) resumes after its acknowledged id."""
    alice, bob = users("alice", "bob")
    a = client(cluster, 0, alice, "laptop", [])
    try:
        yield within(a.when_connected())
        acks = yield within(
            defer.gatherResults([a.send(bob, {"seq": i}) for i in range(8)])
        )
        url = f"{cluster.nodes[1].ws_url}?token={cluster.token(bob)}&session=web"
        first = yield connect_raw(url)
        yield within(first.opened)
        yield wait_for(lambda: len(first.of_type("message")) >= 8, 10, "8 messages")
        first.send_json({"type": "ack", "upto": acks[4]["inbox"]})
        first.send_json({"type": "ping", "id": "p1"})
        # The pong comes after the ack was handled on the same connection.
        yield wait_for(lambda: first.of_type("pong"), 10, "pong")
        yield wait_for(lambda: _cursor_is(cluster, bob, "web", acks[4]["inbox"]), 10)
        first.protocol.sendClose(1000)
        yield within(first.closed)

        second = yield connect_raw(url)
        yield within(second.opened)
        yield wait_for(lambda: len(second.of_type("message")) >= 3, 10, "3 messages")
        assert second.of_type("welcome")[0]["resumed"] is True
        assert [m["body"]["seq"] for m in second.of_type("message")] == [5, 6, 7]
        second.protocol.sendClose(1000)
        yield within(second.closed)
    finally:
        a.stop()


def _cursor_is(cluster: Cluster, user: str, session: str, wanted: str) -> Any:
    def check(result: tuple[int, Any]) -> bool:
        _, info = result
        return any(
            s["session"] == session and s["cursor"] == wanted for s in info["sessions"]
        )

    return http_json(
        "GET", f"{cluster.nodes[0].control_url}/v1/users/{user}"
    ).addCallback(check)
