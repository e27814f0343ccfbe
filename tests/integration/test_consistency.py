"""The consistency checker on real nodes: drift is found, repaired and counted.

Drift is made by hand in Redis (what a crash between two slots' steps leaves
behind), on a database of this module's own, and the nodes check often.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.request import urlopen

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.threads import deferToThread

from tests.integration.conftest import Cluster, Services, start_nodes
from tests.integration.support import wait_for
from tests.integration.test_dead_nodes import redis_address
from tests.integration.test_delivery import users
from tests.integration.test_groups import close, open_session, subscribe
from tests.integration.test_node_store import connect as connect_redis
from tests.integration.test_presence import presence_events
from wsha import keys

DATABASE = 12


@pytest.fixture(scope="module")
def nodes(services: Services) -> Iterator[Cluster]:
    """Two nodes on their own database, checking every 0.3 s."""
    base = services.redis_url.rsplit("/", 1)[0]
    own = Services(f"{base}/{DATABASE}", services.kafka)
    running = start_nodes(own, 2, ["--consistency-interval=0.3"])
    yield running
    for node in running.nodes:
        node.stop()


@defer.inlineCallbacks
def repairs(cluster: Cluster) -> Any:
    """Fire with the repairs counted by all nodes, by kind (scraped from /metrics)."""

    def scrape(url: str) -> str:
        with urlopen(f"{url}/metrics", timeout=10) as response:
            return str(response.read().decode())

    counted: dict[str, float] = {}
    for node in cluster.nodes:
        text = yield deferToThread(scrape, node.control_url)
        for family in text_string_to_metric_families(text):
            if family.name != "wsha_consistency_repairs":
                continue
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    kind = sample.labels["kind"]
                    counted[kind] = counted.get(kind, 0) + sample.value
    return counted


@pytest_twisted.inlineCallbacks
def test_drift_is_repaired_counted_and_announced(
    nodes: Cluster, services: Services
) -> Any:
    """A member without a session, one whose session is not subscribed, a
    presence entry and an online session held by a node that never existed,
    and a presence entry whose connection ended without leaving are all
    repaired within a few checks; the group's members get the leave events,
    and /metrics counts each kind."""
    alice, ghost, zed, yan, vic, una = users(
        "alice", "ghost", "zed", "yan", "vic", "una"
    )
    (room,) = users("room")
    a = yield open_session(nodes, 0, alice, "laptop")
    yield subscribe(a, room, presence=True)

    redis = yield connect_redis(redis_address(services), DATABASE)
    try:
        yield redis.sadd(keys.group_members(room), keys.member(ghost, "phone"))
        yield redis.hset(keys.session(vic, "phone"), "epoch", "3")
        yield redis.sadd(keys.group_members(room), keys.member(vic, "phone"))
        yield redis.hset(
            keys.group_presence(room), keys.member(zed, "phone"), "77 never-a-node"
        )
        yield redis.hset(keys.online(yan), "tablet", "never-a-node")
        # A connection of una on a live node ended, but its leave was lost.
        yield redis.hmset(keys.session(una, "phone"), {"epoch": "8", "online": "0"})
        yield redis.hset(
            keys.group_presence(room),
            keys.member(una, "phone"),
            f"8 {nodes.nodes[1].node_id}",
        )
        yield redis.hmset(
            keys.session(yan, "tablet"),
            {"node": "never-a-node", "epoch": "5", "online": "1"},
        )

        yield wait_for(
            lambda: (
                {("leave", zed, "phone"), ("leave", una, "phone")}
                <= set(presence_events(a, room))
            ),
            10,
            "leave events of the stale presence entries",
        )

        @defer.inlineCallbacks
        def repaired() -> Any:
            members = yield redis.smembers(keys.group_members(room))
            held = yield redis.hgetall(keys.group_presence(room))
            online = yield redis.hgetall(keys.online(yan))
            return (
                members == {keys.member(alice, "laptop")}
                and list(held) == [keys.member(alice, "laptop")]
                and online == {}
            )

        yield wait_for(repaired, 10, "all drift repaired")
        session = yield redis.hgetall(keys.session(yan, "tablet"))
        assert session["online"] == "0" and session["node"] == ""
    finally:
        yield redis.disconnect()

    counted = yield repairs(nodes)
    for kind in (
        "member_without_session",
        "member_without_subscription",
        "presence_on_dead_node",
        "presence_without_connection",
        "session_on_dead_node",
    ):
        assert counted.get(kind, 0) >= 1, counted
    yield close(a)
