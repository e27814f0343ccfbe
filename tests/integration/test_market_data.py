"""Market data on real nodes and real Redis: an external producer appends to an
instrument's stream with plain XADD, and clients on two nodes get a snapshot,
then every live tick in order; a resume by id gets exactly what was missed;
a reader that stops reading is conflated (or closed with 4008), never
buffered without bound, while other clients of its node keep up."""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import pytest_twisted
import txredisapi
from twisted.internet import defer

from tests.integration.conftest import Cluster, Services, start_nodes
from tests.integration.support import (
    RawPeer,
    connect_raw,
    http_json,
    wait_for,
    within,
)
from wsha import keys
from wsha.client import GatewayClient
from wsha.market import InstrumentStore

SLOW_CLIENT_TIMEOUT = 8.0
"""The module's nodes give a backed-up client this long before 4008."""


@pytest.fixture(scope="module")
def market_cluster(services: Services) -> Iterator[Cluster]:
    """Two nodes that leave a backed-up client 8 s to catch up."""
    running = start_nodes(
        services, 2, ["--slow-client-timeout", str(SLOW_CLIENT_TIMEOUT)]
    )
    yield running
    for node in running.nodes:
        node.stop()


@pytest.fixture
def impatient_node(services: Services) -> Iterator[Cluster]:
    """One node that closes a client backed up for 1 s."""
    running = start_nodes(services, 1, ["--slow-client-timeout", "1"])
    yield running
    for node in running.nodes:
        node.stop()


@pytest.fixture
def instrument() -> str:
    """A fresh instrument name (the producer deletes its stream after the test)."""
    return f"it/{secrets.token_hex(4)}"


class Producer:
    """An external producer: plain XADD on a connection of its own."""

    def __init__(self, connection: Any):
        self.connection = connection
        self.used: set[str] = set()

    def publish(self, instrument: str, value: Any, maxlen: int = 100_000) -> Any:
        """XADD one tick; fires with its id."""
        self.used.add(instrument)
        return self.connection.execute_command(
            "XADD",
            keys.instrument_ticks(instrument),
            "MAXLEN",
            "~",
            maxlen,
            "*",
            "v",
            json.dumps(value),
        )

    @defer.inlineCallbacks
    def burst(self, instrument: str, values: list[Any]) -> Any:
        """XADD every value, pipelined; fires with the ids in order."""
        ids = yield defer.gatherResults([self.publish(instrument, v) for v in values])
        return [str(i) for i in ids]


@pytest.fixture
def producer(services: Services) -> Iterator[Producer]:
    """A producer connected to the shared Redis; deletes its streams after."""
    parsed = urlparse(services.redis_url)
    connection = pytest_twisted.blockon(
        txredisapi.Connection(
            parsed.hostname, parsed.port, reconnect=False, convertNumbers=False
        )
    )
    made = Producer(connection)
    yield made
    for instrument in made.used:
        pytest_twisted.blockon(
            connection.execute_command("DEL", keys.instrument_ticks(instrument))
        )
    pytest_twisted.blockon(connection.disconnect())


@defer.inlineCallbacks
def open_peer(cluster: Cluster, node: int, user: str, session: str) -> Any:
    """A raw WebSocket client of ``user`` on node ``node``, once welcomed."""
    url = f"{cluster.nodes[node].ws_url}?token={cluster.token(user)}&session={session}"
    peer: RawPeer = yield within(connect_raw(url))
    yield within(peer.opened)
    yield wait_for(lambda: peer.of_type("welcome"), 10, "welcome")
    return peer


@defer.inlineCallbacks
def subscribe(peer: RawPeer, instrument: str, after: str | None = None) -> Any:
    """Subscribe ``peer`` to ``instrument``; fires once it is answered."""
    frame: dict[str, Any] = {"type": "subscribe", "id": instrument}
    frame["instrument"] = instrument
    if after is not None:
        frame["after"] = after
    peer.send_json(frame)
    yield wait_for(
        lambda: [f for f in peer.of_type("subscribed") if f["id"] == instrument],
        10,
        f"subscribed to {instrument}",
    )


def ticks(peer: RawPeer, instrument: str) -> list[dict[str, Any]]:
    """The tick frames of ``instrument`` that ``peer`` received."""
    return [t for t in peer.of_type("tick") if t["instrument"] == instrument]


def rss_kib(pid: int) -> int:
    """The resident memory of process ``pid``, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def user() -> str:
    """A fresh user id."""
    return f"trader-{secrets.token_hex(4)}"


@pytest_twisted.inlineCallbacks
def test_store_on_real_redis(producer: Producer, instrument: str) -> Any:
    """InstrumentStore against real Redis: publish trims approximately, latest
    is the newest, and tail says whether a resume is contiguous."""
    store = InstrumentStore(producer.connection, max_length=1000)
    producer.used.add(instrument)
    ids = []
    for i in range(6):
        ids.append((yield store.publish(instrument, json.dumps({"n": i}))))
    latest = yield store.latest(instrument)
    assert (latest.id, json.loads(latest.value_json)) == (ids[-1], {"n": 5})

    got, contiguous = yield store.tail(instrument, ids[2], 10)
    assert ([t.id for t in got], contiguous) == (ids[3:], True)
    got, contiguous = yield store.tail(instrument, ids[0], 2)
    assert ([t.id for t in got], contiguous) == (ids[-2:], False)

    yield producer.connection.execute_command(
        "XTRIM", keys.instrument_ticks(instrument), "MAXLEN", 2
    )
    got, contiguous = yield store.tail(instrument, ids[1], 10)
    assert ([t.id for t in got], contiguous) == (ids[-2:], False)


@pytest_twisted.inlineCallbacks
def test_snapshot_then_every_live_tick_on_both_nodes(
    market_cluster: Cluster, producer: Producer, instrument: str
) -> Any:
    """Clients on node A and node B each get subscribed, the latest value as a
    snapshot, then every tick an external producer appends, in order, once."""
    yield producer.burst(instrument, [{"n": -2}, {"n": -1}])
    latest = str((yield producer.publish(instrument, {"n": 0})))
    peers = []
    for node in (0, 1):
        peers.append((yield open_peer(market_cluster, node, user(), "desk")))
    try:
        for peer in peers:
            yield subscribe(peer, instrument)
        live = yield producer.burst(instrument, [{"n": i} for i in range(1, 301)])

        for peer in peers:
            yield wait_for(
                lambda p=peer: len(ticks(p, instrument)) >= 301, 15, "301 ticks"
            )
            got = ticks(peer, instrument)
            assert [t["id"] for t in got] == [latest, *live]
            assert [t["value"]["n"] for t in got] == list(range(301))
            assert got[0]["snapshot"] is True
            assert all(t["snapshot"] is False for t in got[1:])
            assert not any(t.get("conflated") for t in got)
            kinds = [f["type"] for f in peer.frames]
            assert kinds.index("subscribed") < kinds.index("tick")
    finally:
        for peer in peers:
            peer.protocol.sendClose(1000)  # type: ignore[union-attr]


@pytest_twisted.inlineCallbacks
def test_resume_on_the_other_node_gets_exactly_the_missed_ticks(
    market_cluster: Cluster, producer: Producer, instrument: str
) -> Any:
    """A client that saw ticks on node A and comes back on node B with
    ``after`` = its last id gets exactly the ticks it missed, then live ones."""
    trader = user()
    first = yield open_peer(market_cluster, 0, trader, "desk")
    yield subscribe(first, instrument)
    seen = yield producer.burst(instrument, [{"n": i} for i in range(10)])
    yield wait_for(lambda: len(ticks(first, instrument)) >= 10, 10, "10 ticks")
    first.protocol.sendClose(1000)  # type: ignore[union-attr]
    yield within(first.closed)

    missed = yield producer.burst(instrument, [{"n": i} for i in range(10, 25)])
    second = yield open_peer(market_cluster, 1, trader, "desk")
    try:
        yield subscribe(second, instrument, after=seen[-1])
        more = yield producer.burst(instrument, [{"n": i} for i in range(25, 30)])
        yield wait_for(lambda: len(ticks(second, instrument)) >= 20, 10, "20 ticks")
        got = ticks(second, instrument)
        assert [t["id"] for t in got] == missed + more
        assert not any(t["snapshot"] or t.get("conflated") for t in got)
    finally:
        second.protocol.sendClose(1000)  # type: ignore[union-attr]


@pytest_twisted.inlineCallbacks
def test_client_resumes_its_instruments_after_moving_nodes(
    market_cluster: Cluster, producer: Producer, instrument: str
) -> Any:
    """GatewayClient: after its link drops and it reconnects to the other node,
    it subscribes again after its last tick, and its application sees every
    tick once, in order."""
    from twisted.internet import reactor

    trader = user()
    got: list[dict[str, Any]] = []
    client = GatewayClient(
        reactor,
        market_cluster.nodes[0].ws_url,
        lambda: market_cluster.token(trader),
        "desk",
        lambda message: None,
    )
    client.on_tick = got.append
    client.start()
    try:
        yield within(client.when_connected())
        yield within(client.watch(instrument))
        before = yield producer.burst(instrument, [{"n": i} for i in range(20)])
        yield wait_for(lambda: len(got) >= 20, 10, "20 ticks on node A")

        client.url = market_cluster.nodes[1].ws_url
        assert client._link is not None
        client._link.transport.abortConnection()  # type: ignore[union-attr]
        during = yield producer.burst(instrument, [{"n": i} for i in range(20, 40)])
        welcome = yield within(client.when_connected())
        assert welcome["node"] == market_cluster.nodes[1].node_id
        after = yield producer.burst(instrument, [{"n": i} for i in range(40, 50)])
        yield wait_for(lambda: len(got) >= 50, 10, "50 ticks in all")

        assert [t["id"] for t in got] == before + during + after
        assert client.stats.connects == 2
    finally:
        client.stop()


@pytest_twisted.inlineCallbacks
def test_unsubscribe_and_publish_through_the_control_api(
    market_cluster: Cluster, instrument: str, producer: Producer
) -> Any:
    """Ticks published with POST /v1/instruments/{i}/ticks on one node reach a
    client on the other; after unsubscribe none do."""
    producer.used.add(instrument)
    peer = yield open_peer(market_cluster, 1, user(), "desk")
    try:
        yield subscribe(peer, instrument)
        url = f"{market_cluster.nodes[0].control_url}/v1/instruments/{instrument}/ticks"
        status, answer = yield http_json("POST", url, {"value": {"bid": 1.25}})
        assert status == 200 and answer["instrument"] == instrument
        yield wait_for(lambda: ticks(peer, instrument), 10, "the published tick")
        assert ticks(peer, instrument)[0]["id"] == answer["id"]

        peer.send_json({"type": "unsubscribe", "id": "u", "instrument": instrument})
        yield wait_for(lambda: peer.of_type("unsubscribed"), 10, "unsubscribed")
        marker = yield producer.publish(instrument, "after")
        other = yield open_peer(market_cluster, 1, user(), "desk")
        yield subscribe(other, instrument)
        yield wait_for(lambda: ticks(other, instrument), 10, "snapshot")
        assert ticks(other, instrument)[-1]["id"] == marker
        assert len(ticks(peer, instrument)) == 1
        other.protocol.sendClose(1000)  # type: ignore[union-attr]
    finally:
        peer.protocol.sendClose(1000)  # type: ignore[union-attr]


def flood_bytes() -> int:
    """Enough tick bytes to fill a stalled reader's kernel buffers for sure.

    The node's socket send buffer grows up to the largest ``tcp_wmem``; the
    reader's receive buffer is pinned small (:func:`stall`). Past both, the
    node's transport buffer fills and its output for the reader pauses.
    """
    largest = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    return largest + 2 * 1024 * 1024


def stall(peer: RawPeer) -> None:
    """Stop reading from ``peer``'s socket, whose receive buffer is pinned at
    64 KiB (a client that stopped reading, with a bounded kernel buffer)."""
    transport: Any = peer.protocol.transport  # type: ignore[union-attr]
    transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    transport.pauseProducing()


@defer.inlineCallbacks
def flood(
    producer: Producer, instrument: str, reader: RawPeer, size: int = 1000
) -> Any:
    """Publish ticks of about ``size`` bytes, :func:`flood_bytes` in all, in
    bursts the node writes in one go (under the 64 KiB at which a transport
    pauses), each once ``reader`` has received the one before, so that
    reader is never the slow one; fires with every id published."""
    published: list[str] = []
    pad = "x" * size
    chunk = 50
    before = len(ticks(reader, instrument))
    for c in range(flood_bytes() // (chunk * size) + 1):
        values = [{"n": c * chunk + i, "pad": pad} for i in range(chunk)]
        published += yield producer.burst(instrument, values)
        wanted = len(published)
        yield wait_for(
            lambda n=wanted: len(ticks(reader, instrument)) - before >= n,
            15,
            f"{wanted} ticks at the reader that keeps up",
        )
    return published


@pytest_twisted.inlineCallbacks
def test_slow_reader_is_conflated_and_the_node_stays_bounded(
    market_cluster: Cluster, producer: Producer, instrument: str
) -> Any:
    """A client that stops reading while megabytes of ticks go out: the node's
    memory stays bounded; once it reads again it gets the latest tick marked
    conflated and never an older id after a newer; a client of the same node
    that keeps reading gets every tick."""
    node = market_cluster.nodes[0]
    assert node.process is not None
    yield producer.publish(instrument, {"n": -1})
    steady = yield open_peer(market_cluster, 0, user(), "steady")
    slow = yield open_peer(market_cluster, 0, user(), "slow")
    try:
        for peer in (steady, slow):
            yield subscribe(peer, instrument)
        yield wait_for(lambda: ticks(slow, instrument), 10, "snapshot")
        stall(slow)
        memory_before = rss_kib(node.process.pid)

        published = yield flood(producer, instrument, steady)
        grown = rss_kib(node.process.pid) - memory_before

        slow.protocol.transport.resumeProducing()  # type: ignore[union-attr]
        yield wait_for(
            lambda: ticks(slow, instrument)[-1]["id"] == published[-1],
            15,
            "the latest tick at the slow reader",
        )
        got = ticks(slow, instrument)
        order = [tuple(map(int, t["id"].split("-"))) for t in got]
        assert order == sorted(set(order))
        assert got[-1].get("conflated") is True
        assert len(got) < len(published) / 2
        assert slow.close_code is None

        assert [t["id"] for t in ticks(steady, instrument)[1:]] == published
        assert not any(t.get("conflated") for t in ticks(steady, instrument))
        # Megabytes went out to the slow reader's connection beyond what its
        # kernel buffers took; the node kept none of them.
        assert grown < 4 * 1024, f"node grew by {grown} KiB"
    finally:
        for peer in (steady, slow):
            peer.protocol.sendClose(1000)  # type: ignore[union-attr]


@pytest_twisted.inlineCallbacks
def test_stuck_reader_is_closed_with_4008(
    impatient_node: Cluster, producer: Producer, instrument: str
) -> Any:
    """A client that stays backed up past --slow-client-timeout is closed with
    4008, which it reads once it reads again; a client of the same node that
    keeps reading is unaffected and keeps getting ticks."""
    node = impatient_node.nodes[0]
    stuck_user = user()
    steady = yield open_peer(impatient_node, 0, user(), "steady")
    stuck = yield open_peer(impatient_node, 0, stuck_user, "stuck")
    try:
        for peer in (steady, stuck):
            yield subscribe(peer, instrument)
        stall(stuck)
        yield flood(producer, instrument, steady)

        # The node logs the close it starts (the stuck client cannot see it
        # before it reads); waiting for that keeps the test free of sleeps.
        marker = f"{stuck_user}/stuck with 4008"
        yield wait_for(lambda: marker in node.log_path.read_text(), 10, "the close")
        stuck.protocol.transport.resumeProducing()  # type: ignore[union-attr]
        code, _ = yield within(stuck.closed, 10)
        assert code == 4008
        assert stuck.close_reason == "client too slow"

        last = yield producer.publish(instrument, {"n": "after"})
        yield wait_for(
            lambda: ticks(steady, instrument)[-1]["id"] == str(last), 10, "live"
        )
        assert steady.close_code is None
    finally:
        steady.protocol.sendClose(1000)  # type: ignore[union-attr]
