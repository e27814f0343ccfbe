"""Presence, multi-device sessions and the group control API on real nodes.

The nodes use a Redis database of their own and short heartbeat settings, so
that a killed node is noticed in about a second and only these nodes' reapers
clean up after it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.integration.conftest import Cluster, Services, start_nodes
from tests.integration.support import connect_raw, http_json, wait_for, within
from tests.integration.test_dead_nodes import redis_address
from tests.integration.test_delivery import users
from tests.integration.test_groups import (
    close,
    group_seqs,
    open_session,
    publish_all,
    subscribe,
)
from tests.integration.test_node_store import connect as connect_redis
from wsha import keys, wire

DATABASE = 13
HEARTBEAT, TTL, SCAN = 0.25, 1.0, 0.25
FAST = [
    f"--heartbeat-interval={HEARTBEAT}",
    f"--heartbeat-ttl={TTL}",
    f"--reaper-interval={SCAN}",
    "--max-sessions-per-user=2",
]
LEAVE_BOUND = TTL + SCAN + 2.0
"""A dead node's members have left their groups this long after it died, at most."""


@pytest.fixture(scope="module")
def nodes(services: Services) -> Iterator[Cluster]:
    """Three nodes on their own database; tests may kill the last one."""
    base = services.redis_url.rsplit("/", 1)[0]
    own = Services(f"{base}/{DATABASE}", services.kafka)
    running = start_nodes(own, 3, FAST)
    yield running
    for node in running.nodes:
        if node.process is not None and node.process.poll() is None:
            node.stop()


def presence_events(peer: Any, group: str) -> list[tuple[str, str, str]]:
    """The (kind, user, session) of every join/leave ``peer`` got for ``group``."""
    return [
        (f["type"], f["user"], f["session"])
        for f in peer.frames
        if isinstance(f, dict)
        and f.get("type") in ("join", "leave")
        and f.get("group") == group
    ]


@pytest_twisted.inlineCallbacks
def test_join_and_leave_events_and_presence_query(nodes: Cluster) -> Any:
    """A member asking for presence sees who is online when it subscribes, gets
    a join when another member subscribes on another node and a leave when
    that member's connection closes; a presence query answers the same."""
    alice, bob = users("alice", "bob")
    (room,) = users("room")
    a = yield open_session(nodes, 0, alice, "laptop")
    answer = yield subscribe(a, room, presence=True)
    assert answer["presence"] == [
        {"user": alice, "session": "laptop", "node": nodes.nodes[0].node_id}
    ]
    b = yield open_session(nodes, 1, bob, "phone")
    yield subscribe(b, room)
    yield wait_for(
        lambda: ("join", bob, "phone") in presence_events(a, room), 10, "bob's join"
    )
    a.send_json({"type": "presence", "id": "q", "group": room})
    yield wait_for(lambda: a.of_type("presence"), 10, "presence answer")
    listed = {(m["user"], m["session"]) for m in a.of_type("presence")[0]["members"]}
    assert listed == {(alice, "laptop"), (bob, "phone")}

    yield close(b)
    yield wait_for(
        lambda: ("leave", bob, "phone") in presence_events(a, room), 10, "bob's leave"
    )
    assert presence_events(a, room).count(("join", bob, "phone")) == 1
    yield close(a)


@pytest_twisted.inlineCallbacks
def test_killed_nodes_members_leave_within_seconds(
    nodes: Cluster, services: Services
) -> Any:
    """Node 3 is killed with SIGKILL while two members of a group are on it: the
    member on node 1 gets both leave events within the lease bound, and neither
    the group's presence nor the control API lists anyone of the dead node."""
    from twisted.internet import reactor

    alice, bob, carol = users("alice", "bob", "carol")
    (room,) = users("room")
    a = yield open_session(nodes, 0, alice, "laptop")
    yield subscribe(a, room, presence=True)
    b = yield open_session(nodes, 2, bob, "phone")
    c = yield open_session(nodes, 2, carol, "tablet")
    yield subscribe(b, room)
    yield subscribe(c, room)
    yield wait_for(lambda: len(presence_events(a, room)) == 2, 10, "two joins")

    dead = nodes.nodes[2]
    assert dead.process is not None
    os.kill(dead.process.pid, signal.SIGKILL)
    killed_at = reactor.seconds()
    yield wait_for(
        lambda: (
            {e for e in presence_events(a, room) if e[0] == "leave"}
            == {("leave", bob, "phone"), ("leave", carol, "tablet")}
        ),
        LEAVE_BOUND + 5,
        "leave events of the dead node's members",
    )
    took = reactor.seconds() - killed_at
    assert took < LEAVE_BOUND, f"leaves took {took:.2f}s"

    status, group = yield http_json(
        "GET", f"{nodes.nodes[0].control_url}/v1/groups/{room}"
    )
    assert status == 200
    assert group["online"] == [
        {"user": alice, "session": "laptop", "node": nodes.nodes[0].node_id}
    ]
    redis = yield connect_redis(redis_address(services), DATABASE)
    try:
        held = yield redis.hgetall(keys.group_presence(room))
    finally:
        yield redis.disconnect()
    assert list(held) == [keys.member(alice, "laptop")]
    yield within(defer.DeferredList([b.closed, c.closed]))
    yield close(a)


@pytest_twisted.inlineCallbacks
def test_session_limit_refuses_a_third_device_with_4009(nodes: Cluster) -> Any:
    """With two sessions online (the limit here), a third device is closed with
    4009, while one of the two reconnecting (a takeover) is still served."""
    (dora,) = users("dora")
    phone = yield open_session(nodes, 0, dora, "phone")
    laptop = yield open_session(nodes, 1, dora, "laptop")
    url = f"{nodes.nodes[1].ws_url}?token={nodes.token(dora)}&session=tablet"
    tablet = yield connect_raw(url)
    code, _ = yield within(tablet.closed)
    assert code == wire.CLOSE_TOO_MANY_SESSIONS
    assert not tablet.of_type("welcome")

    again = yield open_session(nodes, 1, dora, "phone")
    code, _ = yield within(phone.closed)
    assert code == wire.CLOSE_TAKEN_OVER
    yield close(laptop, again)


@pytest_twisted.inlineCallbacks
def test_each_device_resumes_on_its_own(nodes: Cluster) -> Any:
    """Two devices of one user on two nodes both get every group message; one
    drops, misses ten and resumes on the other node after its own position,
    while the other device's position is untouched."""
    alice, erin = users("alice", "erin")
    (room,) = users("room")
    a = yield open_session(nodes, 0, alice, "laptop")
    yield subscribe(a, room)
    phone = yield open_session(nodes, 0, erin, "phone")
    laptop = yield open_session(nodes, 1, erin, "laptop")
    yield subscribe(phone, room)
    yield subscribe(laptop, room)
    publish_all(a, room, 0, 10)
    yield wait_for(lambda: len(group_seqs(phone, room)) == 10, 10, "phone's 10")
    yield wait_for(lambda: len(group_seqs(laptop, room)) == 10, 10, "laptop's 10")
    last = phone.of_type("group_message")[-1]["id"]
    phone.send_json({"type": "ack", "group": room, "upto": last})
    phone.send_json({"type": "ping"})
    yield wait_for(lambda: phone.of_type("pong"), 10, "pong")
    yield close(phone)

    publish_all(a, room, 10, 10)
    yield wait_for(lambda: len(group_seqs(laptop, room)) == 20, 10, "laptop's 20")
    back = yield open_session(nodes, 1, erin, "phone")
    yield wait_for(lambda: len(group_seqs(back, room)) >= 10, 10, "phone's missed 10")
    assert group_seqs(back, room) == list(range(10, 20))
    assert group_seqs(laptop, room) == list(range(20))
    yield close(a, laptop, back)


@pytest_twisted.inlineCallbacks
def test_control_api_subscribes_an_online_session_and_publishes(
    nodes: Cluster,
) -> Any:
    """Subscribing a user through node 1's control API reaches the session on
    node 2, which announces it with ``subscribed`` and then delivers what the
    control API publishes; unsubscribing through the API stops it."""
    (fay,) = users("fay")
    (room,) = users("room")
    f = yield open_session(nodes, 1, fay, "phone")
    control = nodes.nodes[0].control_url
    status, body = yield http_json(
        "POST", f"{control}/v1/groups/{room}/subscribe", {"user": fay}
    )
    assert (status, body["sessions"]) == (200, ["phone"])
    yield wait_for(lambda: f.of_type("subscribed"), 10, "subscribed frame")
    assert f.of_type("subscribed")[0]["group"] == room

    for seq in range(5):
        status, stored = yield http_json(
            "POST",
            f"{control}/v1/groups/{room}/publish",
            {"id": f"ops-{seq}", "from": "ops", "body": {"seq": seq}},
        )
        assert status == 200 and stored["duplicate"] is False
    status, again = yield http_json(
        "POST",
        f"{control}/v1/groups/{room}/publish",
        {"id": "ops-4", "from": "ops", "body": {"seq": 4}},
    )
    assert again["duplicate"] is True and again["history"] == stored["history"]
    yield wait_for(lambda: len(group_seqs(f, room)) == 5, 10, "five publishes")
    assert group_seqs(f, room) == list(range(5))
    assert {m["from"] for m in f.of_type("group_message")} == {"ops"}

    status, _ = yield http_json(
        "POST", f"{control}/v1/groups/{room}/unsubscribe", {"user": fay}
    )
    assert status == 200
    yield wait_for(lambda: f.of_type("unsubscribed"), 10, "unsubscribed frame")
    status, group = yield http_json("GET", f"{control}/v1/groups/{room}")
    assert group["members"] == [] and group["online"] == []
    yield close(f)
