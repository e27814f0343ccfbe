"""Groups on real nodes: fan-out through Redis Pub/Sub, history, restore on resume."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import defer

from tests.integration.conftest import Cluster
from tests.integration.support import RawPeer, connect_raw, wait_for, within
from tests.integration.test_delivery import users
from wsha import wire


@defer.inlineCallbacks
def open_session(
    cluster: Cluster,
    node: int,
    user: str,
    session: str,
    after: str | None = None,
    extra: str = "",
) -> Any:
    """A raw connection of ``user``/``session`` on node ``node``, once welcomed.

    ``extra`` is appended to the query string as it is.
    """
    url = f"{cluster.nodes[node].ws_url}?token={cluster.token(user)}&session={session}"
    if after is not None:
        url += f"&after={after}"
    url += extra
    peer = yield connect_raw(url)
    yield within(peer.opened)
    yield wait_for(lambda: peer.of_type("welcome"), 10, f"welcome of {user}")
    return peer


def group_seqs(peer: RawPeer, group: str) -> list[int]:
    """The ``seq`` of each group message ``peer`` received from ``group``, in order."""
    return [
        f["body"]["seq"] for f in peer.of_type("group_message") if f["group"] == group
    ]


@defer.inlineCallbacks
def subscribe(peer: RawPeer, group: str, **extra: Any) -> Any:
    """Subscribe ``peer`` to ``group``; fires with the ``subscribed`` answer."""
    request = f"sub-{group}-{len(peer.frames)}"
    peer.send_json({"type": "subscribe", "id": request, "group": group, **extra})
    answers = yield wait_for(
        lambda: (
            [f for f in peer.of_type("subscribed") if f.get("id") == request]
            or [f for f in peer.of_type("error") if f.get("id") == request]
        ),
        10,
        f"subscribed to {group}",
    )
    return answers[0]


def publish_all(peer: RawPeer, group: str, start: int, count: int) -> None:
    """Pipeline ``count`` numbered publishes to ``group``."""
    for seq in range(start, start + count):
        peer.send_json(
            {"type": "publish", "id": f"p-{seq}", "group": group, "body": {"seq": seq}}
        )


def close(*peers: RawPeer) -> defer.Deferred[Any]:
    """Close every open peer cleanly; fires once all are closed."""
    waits = []
    for peer in peers:
        if peer.close_code is None and peer.protocol is not None:
            peer.protocol.sendClose(1000)
        waits.append(peer.closed)
    return within(defer.gatherResults(waits))


@pytest_twisted.inlineCallbacks
def test_group_messages_reach_members_on_every_node_in_order_once(
    cluster: Cluster,
) -> Any:
    """Members on two nodes get all 300 messages of one publisher, in order,
    once; every publish is acked with an increasing history id."""
    alice, bob, carol = users("alice", "bob", "carol")
    (room,) = users("room")
    a = yield open_session(cluster, 0, alice, "laptop")
    b = yield open_session(cluster, 1, bob, "phone")
    c = yield open_session(cluster, 1, carol, "tablet")
    for peer in (a, b, c):
        answer = yield subscribe(peer, room)
        assert answer["type"] == "subscribed" and answer["truncated"] is False

    publish_all(a, room, 0, 300)
    yield wait_for(lambda: len(a.of_type("ack")) == 300, 20, "300 publish acks")
    yield wait_for(lambda: len(group_seqs(b, room)) >= 300, 20, "bob's 300")
    yield wait_for(lambda: len(group_seqs(c, room)) >= 300, 20, "carol's 300")
    yield wait_for(lambda: len(group_seqs(a, room)) >= 300, 20, "alice's own 300")

    for peer in (a, b, c):
        assert group_seqs(peer, room) == list(range(300))
    ids = [wire.stream_id_key(ack["history"]) for ack in a.of_type("ack")]
    assert ids == sorted(ids) and len(set(ids)) == 300
    assert [f["id"] for f in b.of_type("group_message")] == [
        ack["history"] for ack in a.of_type("ack")
    ]
    yield close(a, b, c)


@pytest_twisted.inlineCallbacks
def test_subscriptions_follow_the_session_to_another_node(cluster: Cluster) -> Any:
    """Bob subscribes on node 1, acknowledges 50 messages and drops; 50 more
    are published; he reconnects to node 2 without subscribing again and gets
    exactly the 50 he missed, then live ones, in order, once. Reconnecting
    with ``group_after`` naming a later id than he acknowledged, he gets only
    what came after it."""
    alice, bob = users("alice", "bob")
    (room,) = users("room")
    a = yield open_session(cluster, 0, alice, "laptop")
    b = yield open_session(cluster, 0, bob, "phone")
    yield subscribe(a, room)
    yield subscribe(b, room)
    publish_all(a, room, 0, 50)
    yield wait_for(lambda: len(group_seqs(b, room)) == 50, 20, "first 50")
    last = b.of_type("group_message")[-1]["id"]
    b.send_json({"type": "ack", "group": room, "upto": last})
    b.send_json({"type": "ping", "id": "after-ack"})
    yield wait_for(lambda: b.of_type("pong"), 10, "pong after the ack")
    yield close(b)

    publish_all(a, room, 50, 50)
    yield wait_for(lambda: len(a.of_type("ack")) == 100, 20, "100 publish acks")
    b2 = yield open_session(cluster, 1, bob, "phone")
    welcome = b2.of_type("welcome")[0]
    assert welcome["groups"] == {room: {"after": last, "truncated": False}}
    yield wait_for(lambda: len(group_seqs(b2, room)) >= 50, 20, "the missed 50")
    publish_all(a, room, 100, 10)
    yield wait_for(lambda: len(group_seqs(b2, room)) >= 60, 20, "10 live ones")
    assert group_seqs(b2, room) == list(range(50, 110))

    # Seen but not acknowledged: named in group_after, it is not sent again.
    seen = b2.of_type("group_message")[-1]["id"]
    yield close(b2)
    publish_all(a, room, 110, 5)
    yield wait_for(lambda: len(a.of_type("ack")) == 115, 20, "115 publish acks")
    b3 = yield open_session(
        cluster, 0, bob, "phone", extra=f"&group_after=%7B%22{room}%22:%22{seen}%22%7D"
    )
    assert b3.of_type("welcome")[0]["groups"][room]["after"] == seen
    yield wait_for(lambda: len(group_seqs(b3, room)) >= 5, 20, "the 5 unseen")
    assert group_seqs(b3, room) == list(range(110, 115))
    yield close(a, b3)


@pytest_twisted.inlineCallbacks
def test_publish_needs_membership_and_unsubscribe_ends_delivery(
    cluster: Cluster,
) -> Any:
    """A non-member's publish gets not_subscribed (and stores nothing); after
    unsubscribe a session gets no more messages of the group."""
    alice, bob = users("alice", "bob")
    (room,) = users("room")
    a = yield open_session(cluster, 0, alice, "laptop")
    b = yield open_session(cluster, 1, bob, "phone")
    publish_all(a, room, 0, 1)
    yield wait_for(lambda: a.of_type("error"), 10, "refusal")
    assert a.of_type("error")[0]["code"] == "not_subscribed"
    assert a.of_type("error")[0]["retry"] is False

    yield subscribe(a, room)
    yield subscribe(b, room)
    publish_all(a, room, 1, 1)
    yield wait_for(lambda: group_seqs(b, room) == [1], 10, "message 1")
    b.send_json({"type": "unsubscribe", "id": "u1", "group": room})
    yield wait_for(lambda: b.of_type("unsubscribed"), 10, "unsubscribed")
    publish_all(a, room, 2, 1)
    yield wait_for(lambda: group_seqs(a, room) == [1, 2], 10, "message 2 at alice")
    b.send_json({"type": "ping", "id": "last"})
    yield wait_for(lambda: b.of_type("pong"), 10, "pong")
    assert group_seqs(b, room) == [1]
    yield close(a, b)


@pytest_twisted.inlineCallbacks
def test_client_switching_node_mid_stream_loses_and_duplicates_nothing(
    cluster: Cluster,
) -> Any:
    """A GatewayClient subscribed on node 2 moves to node 1 (new address, old
    link left dead) half-way through 400 publishes of another client: it gets
    all 400 in order once, without subscribing again, and the publisher's
    client gets an ack for each."""
    from twisted.internet import reactor

    from wsha.client import GatewayClient

    alice, bob = users("alice", "bob")
    (room,) = users("room")

    def start(node: int, user: str, session: str) -> GatewayClient:
        c = GatewayClient(
            reactor,
            cluster.nodes[node].ws_url,
            lambda: cluster.token(user),
            session,
            lambda frame: None,
        )
        c.start()
        return c

    got: list[dict[str, Any]] = []
    a = start(0, alice, "laptop")
    b = start(1, bob, "phone")
    b.groups.on_group_message = got.append
    try:
        yield within(defer.gatherResults([a.when_connected(), b.when_connected()]))
        yield within(defer.gatherResults([a.subscribe(room), b.subscribe(room)]))
        acks = []
        for seq in range(400):
            if seq == 200:
                yield wait_for(lambda: len(got) >= 100, 20, "100 before the switch")
                b.url = cluster.nodes[0].ws_url
                b.switch_network("127.0.0.2")
            acks.append(a.publish(room, {"seq": seq}))
        answered = yield within(defer.gatherResults(acks), 30)
        assert len({ack["history"] for ack in answered}) == 400
        yield wait_for(lambda: len(got) >= 400, 30, "all 400 at bob")
        assert [m["body"]["seq"] for m in got] == list(range(400))
        # It named its last id on reconnect: the gateway sent nothing twice.
        assert b.groups.duplicates_dropped == 0
        assert b.welcome is not None and b.welcome["node"] == cluster.nodes[0].node_id
        assert room in b.welcome["groups"]
    finally:
        a.stop()
        b.stop()
