"""System broadcasts on three real nodes, on real Redis and Kafka.

The nodes use a broadcast topic (and so a Redis history) of this module's own,
so that no other test run sees these broadcasts; both are removed afterwards.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest
import pytest_twisted
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]
from twisted.internet import defer

from tests.integration.conftest import RUN_DIR, Cluster, Services, start_nodes
from tests.integration.support import http_json, wait_for, within
from tests.integration.test_delivery import users
from wsha import wire
from wsha.client import GatewayClient
from wsha.localcluster import LocalNode, free_port


def forget_channel(services: Services, topic: str) -> None:
    """Delete the broadcast topic ``topic`` and its keys in Redis (ours alone)."""
    admin = AdminClient({"bootstrap.servers": services.kafka})
    for future in admin.delete_topics([topic], operation_timeout=10).values():
        try:
            future.result(timeout=20)
        except Exception as e:
            print(f"broadcast topic {topic} not deleted: {e}")
    redis = urlparse(services.redis_url)
    cli = ["redis-cli", "-h", redis.hostname or "127.0.0.1", "-p", str(redis.port)]
    found = subprocess.run(
        [*cli, "--scan", "--pattern", f"wsha:{{b:{topic}}}:*"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if found:
        subprocess.run([*cli, "DEL", *found], capture_output=True, check=True)


@pytest.fixture(scope="module")
def channel(services: Services) -> Iterator[str]:
    """A broadcast topic name no other test run uses; cleaned up afterwards."""
    topic = f"wsha.broadcast.it-{secrets.token_hex(4)}"
    yield topic
    forget_channel(services, topic)


@pytest.fixture(scope="module")
def trio(services: Services, channel: str) -> Iterator[Cluster]:
    """Three real nodes sharing this module's broadcast topic."""
    running = start_nodes(services, 3, [f"--broadcast-topic={channel}"])
    yield running
    for node in running.nodes:
        node.stop()


def listener(
    cluster: Cluster,
    node: int | LocalNode,
    user: str,
    session: str,
    got: list[Any],
    tags: list[str] | None = None,
    broadcast_after: str | None = None,
) -> GatewayClient:
    """A started client of ``user`` appending the broadcasts it gets to ``got``."""
    from twisted.internet import reactor

    where = cluster.nodes[node] if isinstance(node, int) else node
    c = GatewayClient(
        reactor,
        where.ws_url,
        lambda: cluster.token(user, tags=tags),
        session,
        lambda message: None,
        on_broadcast=got.append,
        broadcast_after=broadcast_after,
    )
    c.start()
    return c


def broadcast(
    node: LocalNode, body: Any, audience: Any = "all", **extra: Any
) -> defer.Deferred[tuple[int, Any]]:
    """POST /v1/broadcast to ``node``; fires with (status, reply).

    ``extra`` adds fields: ``id``, and ``sender`` for ``from``.
    """
    command = {"body": body, "audience": audience, **extra}
    if "sender" in command:
        command["from"] = command.pop("sender")
    return http_json("POST", f"{node.control_url}/v1/broadcast", command)


@defer.inlineCallbacks
def send_numbered(node: LocalNode, count: int, start: int = 0) -> Any:
    """Send broadcasts ``{"seq": start..start+count-1}`` one after another through
    ``node``; fires with their history ids."""
    ids = []
    for seq in range(start, start + count):
        status, reply = yield broadcast(node, {"seq": seq})
        assert status == 200 and reply["duplicate"] is False, reply
        ids.append(reply["id"])
    return ids


def seqs(got: list[dict[str, Any]]) -> list[int]:
    """The ``seq`` of each received broadcast body, in arrival order."""
    return [b["body"]["seq"] for b in got]


def stop_all(*clients: GatewayClient) -> None:
    """Stop every client."""
    for c in clients:
        c.stop()


@pytest_twisted.inlineCallbacks
def test_broadcasts_reach_every_node_once_in_order(trio: Cluster) -> Any:
    """200 numbered broadcasts sent through one node's control API reach two
    clients on each of three nodes: all of them, once each, in order, with the
    history ids the control API answered."""
    got: list[list[Any]] = [[] for _ in range(6)]
    names = users(*(f"u{i}" for i in range(6)))
    clients = [
        listener(trio, i % 3, names[i], "phone", got[i]) for i in range(len(got))
    ]
    try:
        yield within(defer.gatherResults([c.when_connected() for c in clients]))

        ids = yield within(send_numbered(trio.nodes[0], 200), 60)

        for received in got:
            yield wait_for(lambda r=received: len(r) >= 200, 20, "200 broadcasts")
        for c, received in zip(clients, got, strict=True):
            assert seqs(received) == list(range(200))
            assert [b["id"] for b in received] == ids
            assert all(b["from"] == "server" for b in received)
            assert c.stats.broadcast_duplicates_dropped == 0
    finally:
        stop_all(*clients)


@pytest_twisted.inlineCallbacks
def test_concurrent_broadcasts_through_every_node_share_one_order(
    trio: Cluster,
) -> Any:
    """Broadcasts sent at once through all three nodes reach a client on each
    node in the same order, the history's, each exactly once."""
    got: list[list[Any]] = [[], [], []]
    names = users("a", "b", "c")
    clients = [listener(trio, i, names[i], "tab", got[i]) for i in range(3)]
    try:
        yield within(defer.gatherResults([c.when_connected() for c in clients]))

        sends = [broadcast(trio.nodes[i % 3], {"seq": i}) for i in range(60)]
        replies = yield within(defer.gatherResults(sends), 60)
        assert all(status == 200 for status, _ in replies)
        stored = sorted((r["id"] for _, r in replies), key=wire.stream_id_key)

        for received in got:
            yield wait_for(lambda r=received: len(r) >= 60, 20, "60 broadcasts")
        orders = [[b["id"] for b in received] for received in got]
        assert orders[0] == orders[1] == orders[2] == stored
        assert all(c.stats.broadcast_duplicates_dropped == 0 for c in clients)
    finally:
        stop_all(*clients)


@pytest_twisted.inlineCallbacks
def test_tag_and_node_audiences_reach_only_their_sessions(trio: Cluster) -> Any:
    """A tag broadcast reaches only users whose token carries the tag; a node
    broadcast only the sessions connected to that node."""
    gold0, gold1, plain1, plain2 = users("gold0", "gold1", "plain1", "plain2")
    got: dict[str, list[Any]] = {name: [] for name in ("g0", "g1", "p1", "p2")}
    clients = [
        listener(trio, 0, gold0, "s", got["g0"], tags=["gold"]),
        listener(trio, 1, gold1, "s", got["g1"], tags=["gold", "silver"]),
        listener(trio, 1, plain1, "s", got["p1"]),
        listener(trio, 2, plain2, "s", got["p2"]),
    ]
    try:
        yield within(defer.gatherResults([c.when_connected() for c in clients]))

        for label, audience in (
            ("gold", {"tag": "gold"}),
            ("silver", {"tag": "silver"}),
            ("node1", {"node": trio.nodes[1].node_id}),
            ("all", "all"),
        ):
            status, _ = yield broadcast(trio.nodes[2], {"label": label}, audience)
            assert status == 200

        # Broadcasts arrive in order, so once "all" is there nothing else comes.
        for received in got.values():
            yield wait_for(
                lambda r=received: r and r[-1]["body"]["label"] == "all", 20, "all"
            )
        labels = {k: [b["body"]["label"] for b in v] for k, v in got.items()}
        assert labels == {
            "g0": ["gold", "all"],
            "g1": ["gold", "silver", "node1", "all"],
            "p1": ["node1", "all"],
            "p2": ["all"],
        }
    finally:
        stop_all(*clients)


@pytest_twisted.inlineCallbacks
def test_a_client_that_reconnects_elsewhere_gets_exactly_what_it_missed(
    trio: Cluster,
) -> Any:
    """A client that got 10 broadcasts on node 1, went away while 20 more were
    sent, and comes back on node 2 with its last broadcast id gets exactly
    those 20, in order, and nothing twice."""
    (user,) = users("roamer")
    before: list[Any] = []
    first = listener(trio, 0, user, "phone", before)
    try:
        yield within(first.when_connected())
        yield within(send_numbered(trio.nodes[1], 10), 30)
        yield wait_for(lambda: len(before) >= 10, 20, "10 broadcasts")
    finally:
        first.stop()
    last = first.last_broadcast_id
    assert last == before[-1]["id"]

    yield within(send_numbered(trio.nodes[2], 20, start=10), 30)

    after: list[Any] = []
    second = listener(trio, 1, user, "phone", after, broadcast_after=last)
    try:
        welcome = yield within(second.when_connected())
        assert welcome["broadcast_after"] == last
        assert welcome["broadcast_truncated"] is False
        yield wait_for(lambda: len(after) >= 20, 20, "20 missed broadcasts")
        yield within(send_numbered(trio.nodes[0], 1, start=30), 30)
        yield wait_for(lambda: len(after) >= 21, 20, "a live broadcast")
        assert seqs(after) == list(range(10, 31))
        assert second.stats.broadcast_duplicates_dropped == 0
    finally:
        second.stop()


@pytest_twisted.inlineCallbacks
def test_a_device_that_lost_its_place_resumes_after_its_acknowledged_one(
    trio: Cluster,
) -> Any:
    """A device that acknowledged 5 broadcasts and reconnects to another node
    without its last id (a reloaded page) resumes after its stored cursor."""
    (user,) = users("reloader")
    before: list[Any] = []
    first = listener(trio, 2, user, "web", before)
    try:
        yield within(first.when_connected())
        yield within(send_numbered(trio.nodes[0], 5), 30)
        yield wait_for(lambda: len(before) >= 5, 20, "5 broadcasts")
    finally:
        first.stop()  # flushes the ack before closing
    # The ack and the release go to Redis on one connection, in that order.
    yield wait_for(lambda: _offline(trio, user), 20, "the session released")

    yield within(send_numbered(trio.nodes[1], 7, start=5), 30)

    after: list[Any] = []
    second = listener(trio, 0, user, "web", after)
    try:
        welcome = yield within(second.when_connected())
        assert welcome["resumed"] is True
        assert welcome["broadcast_after"] == before[-1]["id"]
        yield wait_for(lambda: len(after) >= 7, 20, "7 missed broadcasts")
        assert seqs(after) == list(range(5, 12))
    finally:
        second.stop()


@pytest_twisted.inlineCallbacks
def test_a_new_session_starts_at_the_end_of_the_history(trio: Cluster) -> Any:
    """A session that never connected before gets no old broadcast: it starts
    after the newest one, and gets the next."""
    old = yield within(send_numbered(trio.nodes[0], 3), 30)
    (user,) = users("newcomer")
    got: list[Any] = []
    c = listener(trio, 1, user, "phone", got)
    try:
        welcome = yield within(c.when_connected())
        assert welcome["broadcast_after"] == old[-1]
        assert welcome["broadcast_truncated"] is False
        yield within(send_numbered(trio.nodes[2], 1, start=3), 30)
        yield wait_for(lambda: got, 20, "the new broadcast")
        assert seqs(got) == [3]
    finally:
        c.stop()


@pytest_twisted.inlineCallbacks
def test_a_retried_broadcast_is_stored_and_delivered_once(trio: Cluster) -> Any:
    """The same idempotency id again answers with the original history id and
    delivers nothing more; a bad audience is refused with 400."""
    (user,) = users("listener")
    got: list[Any] = []
    c = listener(trio, 2, user, "phone", got)
    op_id = f"op-{secrets.token_hex(4)}"
    try:
        yield within(c.when_connected())
        status, first = yield broadcast(
            trio.nodes[0], {"seq": 0}, id=op_id, sender="ops"
        )
        assert status == 200 and first["duplicate"] is False
        status, again = yield broadcast(
            trio.nodes[1], {"seq": 0}, id=op_id, sender="ops"
        )
        assert status == 200 and again == {"id": first["id"], "duplicate": True}
        yield within(send_numbered(trio.nodes[2], 1, start=1), 30)
        yield wait_for(lambda: len(got) >= 2, 20, "2 broadcasts")
        assert seqs(got) == [0, 1]
        assert got[0]["from"] == "ops" and got[0]["id"] == first["id"]

        status, refused = yield broadcast(trio.nodes[0], {}, {"team": "x"})
        assert status == 400 and refused["error"] == "bad_audience"
    finally:
        c.stop()


@pytest.fixture(scope="module")
def kafkaless(services: Services, channel: str, trio: Cluster) -> Iterator[LocalNode]:
    """A node of the same cluster whose Kafka address answers nothing (a closed
    port on 127.0.0.1): it starts without Kafka and polls the history."""
    node = LocalNode(
        f"{trio.nodes[0].node_id}-nokafka",
        services.redis_url,
        f"127.0.0.1:{free_port()}",
        trio.secret,
        RUN_DIR,
        extra_args=[f"--broadcast-topic={channel}", "--kafka-fallback-interval=0.2"],
    )
    node.start()
    try:
        node.wait_ready(90)
    except Exception:
        node.kill()
        raise
    yield node
    node.stop()


@pytest_twisted.inlineCallbacks
def test_broadcasts_reach_and_leave_a_node_without_kafka(
    trio: Cluster, kafkaless: LocalNode
) -> Any:
    """A node that cannot reach Kafka still delivers broadcasts, in order, by
    polling the history; one sent through it (its record never leaves) reaches
    the other nodes as soon as a later record shows them the gap."""
    near, far = users("near", "far")
    here: list[Any] = []
    there: list[Any] = []
    a = listener(trio, kafkaless, near, "s", here)
    b = listener(trio, 0, far, "s", there)
    try:
        yield within(defer.gatherResults([a.when_connected(), b.when_connected()]))

        yield within(send_numbered(trio.nodes[1], 20), 30)
        yield wait_for(lambda: len(here) >= 20, 20, "20 broadcasts, polled")

        yield within(send_numbered(kafkaless, 1, start=20), 30)
        yield within(send_numbered(trio.nodes[1], 1, start=21), 30)
        # Well within the 30 s safety sweep: the gap is read at once.
        yield wait_for(lambda: len(there) >= 22, 10, "the gap filled")
        yield wait_for(lambda: len(here) >= 22, 10, "22 broadcasts, polled")
        assert seqs(here) == seqs(there) == list(range(22))
    finally:
        stop_all(a, b)


def _offline(cluster: Cluster, user: str) -> Any:
    def check(result: tuple[int, Any]) -> bool:
        _, info = result
        return bool(info["sessions"]) and not info["online"]

    return http_json(
        "GET", f"{cluster.nodes[0].control_url}/v1/users/{user}"
    ).addCallback(check)
