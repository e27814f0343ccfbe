"""Redis outages on a real node: open connections stay open, new ones get 1013,
sends get retryable errors, readiness says so, and everything recovers by
itself when Redis returns.

The node runs on a Redis of this module's own (never the shared one), with
short timeouts so that each outage outlasts them within seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.threads import deferToThread

from tests.integration.conftest import Cluster, Services, start_nodes
from tests.integration.owned import REPO, OwnedService
from tests.integration.support import RawPeer, connect_raw, http_json, wait_for, within
from tests.integration.test_delivery import users
from wsha import wire
from wsha.client import GatewayClient

REDIS_TIMEOUT = 1.0
HEALTH_INTERVAL = 0.2
FAST = [
    f"--redis-timeout={REDIS_TIMEOUT}",
    f"--redis-health-interval={HEALTH_INTERVAL}",
    "--redis-reconnect-max=0.5",
]
# An outage is noticed within a health round plus a timeout; allow slack.
NOTICE_BOUND = HEALTH_INTERVAL + REDIS_TIMEOUT + 2.0
RECOVERY_BOUND = 5.0


@pytest.fixture(scope="module")
def own_redis() -> Iterator[OwnedService]:
    """A Redis of this module's own on a free port, which the tests stop."""
    redis = OwnedService("redis")
    redis.start()
    yield redis
    redis.stop()


@pytest.fixture(scope="module")
def node(services: Services, own_redis: OwnedService) -> Iterator[Cluster]:
    """One node on the module's Redis (and the shared Kafka)."""
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    running = start_nodes(Services(url, services.kafka), 1, FAST)
    yield running
    for each in running.nodes:
        each.stop()


def save(redis: OwnedService) -> None:
    """SAVE, so a restart finds the data again (as a persistent Redis would)."""
    subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(redis.port), "SAVE"],
        check=True,
        capture_output=True,
        timeout=10,
    )


def redis_pid(redis: OwnedService) -> int:
    """The pid of the Redis ``scripts/redis`` started for ``redis``."""
    pidfile = REPO / ".run" / f"redis-{redis.port}" / "redis.pid"
    return int(pidfile.read_text().strip())


def readiness(cluster: Cluster) -> Any:
    """Fires with (status, body) of the node's ``/readyz``."""
    return http_json("GET", f"{cluster.nodes[0].control_url}/readyz")


def ready_is(cluster: Cluster, status: int) -> Any:
    """Fires true once ``/readyz`` answers ``status``."""
    return readiness(cluster).addCallback(lambda reply: reply[0] == status)


@pytest_twisted.inlineCallbacks
def open_session(cluster: Cluster, user: str, session: str = "s1") -> Any:
    """A raw connection of ``user`` that has received its welcome."""
    url = f"{cluster.nodes[0].ws_url}?token={cluster.token(user)}&session={session}"
    peer = yield within(connect_raw(url))
    yield wait_for(lambda: peer.of_type("welcome"), 10, "welcome")
    return peer


def reply_to(peer: RawPeer, client_id: str, kind: str, count: int = 1) -> Any:
    """The ``count``-th frame of type ``kind`` answering ``client_id``, if any."""
    frames = [f for f in peer.of_type(kind) if f.get("id") == client_id]
    return frames[count - 1] if len(frames) >= count else None


def new_client(cluster: Cluster, user: str, got: list[Any]) -> GatewayClient:
    """A started Python client of ``user`` appending its messages to ``got``."""
    client = GatewayClient(
        reactor,
        cluster.nodes[0].ws_url,
        lambda: cluster.token(user),
        "device",
        got.append,
    )
    client.start()
    return client


@pytest_twisted.inlineCallbacks
def assert_refused_with_1013(cluster: Cluster, user: str) -> Any:
    """A new connection opens, then is closed with 1013 (try again later)."""
    url = f"{cluster.nodes[0].ws_url}?token={cluster.token(user)}&session=late"
    late = yield within(connect_raw(url))
    code, reason = yield within(late.closed)
    assert code == wire.CLOSE_TRY_LATER, (code, reason)
    assert late.of_type("welcome") == []
    return reason


@pytest_twisted.inlineCallbacks
def test_redis_stopped_then_restarted(node: Cluster, own_redis: OwnedService) -> Any:
    """Redis stops for longer than the timeouts: the open connections stay open
    and keep answering, a send gets ``unavailable`` with retry true, a new
    connection gets 1013, /readyz says 503 with redis false while /healthz stays
    200. Redis returns: readiness recovers without a restart, the retried send
    is stored once and delivered once, and the Python client's pending send
    (retried by itself) goes through."""
    alice, bob, carol = users("alice", "bob", "carol")
    got_bob: list[Any] = []
    a = yield open_session(node, alice)
    b = new_client(node, bob, got_bob)
    c = new_client(node, carol, [])
    try:
        yield within(b.when_connected())
        yield within(c.when_connected())
        a.send_json({"type": "send", "id": "m1", "to": bob, "body": 1})
        yield wait_for(lambda: reply_to(a, "m1", "ack"), 10, "ack of m1")
        yield wait_for(lambda: len(got_bob) == 1, 10, "m1 delivered")

        yield deferToThread(save, own_redis)
        yield deferToThread(own_redis.stop)
        stopped_at = reactor.seconds()
        yield wait_for(lambda: ready_is(node, 503), NOTICE_BOUND, "readiness 503")
        noticed = reactor.seconds() - stopped_at
        _, details = yield readiness(node)
        assert details["redis"] is False and details["ready"] is False
        status, _ = yield http_json("GET", f"{node.nodes[0].control_url}/healthz")
        assert status == 200

        a.send_json({"type": "ping", "id": "p1"})
        yield wait_for(lambda: reply_to(a, "p1", "pong"), 5, "pong while down")
        a.send_json({"type": "send", "id": "m2", "to": bob, "body": 2})
        yield wait_for(lambda: reply_to(a, "m2", "error"), 5, "error for m2")
        error = reply_to(a, "m2", "error")
        assert (error["code"], error["retry"]) == ("unavailable", True)
        reason = yield assert_refused_with_1013(node, alice)
        assert reason == "session store unavailable"
        carol_sent = c.send(bob, 3, client_id="c3")

        # Stay down well past every timeout before Redis returns.
        yield task.deferLater(reactor, 3 * REDIS_TIMEOUT, lambda: None)
        assert a.close_code is None
        assert b.stats.connects == 1 and b.welcome is not None
        assert not carol_sent.called

        yield deferToThread(own_redis.start)
        started_at = reactor.seconds()
        yield wait_for(lambda: ready_is(node, 200), RECOVERY_BOUND, "readiness 200")
        recovered = reactor.seconds() - started_at

        a.send_json({"type": "send", "id": "m2", "to": bob, "body": 2})
        yield wait_for(lambda: reply_to(a, "m2", "ack"), 5, "ack of m2")
        a.send_json({"type": "send", "id": "m2", "to": bob, "body": 2})
        yield wait_for(lambda: reply_to(a, "m2", "ack", 2), 5, "second ack of m2")
        first, second = reply_to(a, "m2", "ack"), reply_to(a, "m2", "ack", 2)
        assert (first["duplicate"], second["duplicate"]) == (False, True)
        assert first["inbox"] == second["inbox"]
        carol_ack = yield within(carol_sent, 10)
        assert carol_ack["duplicate"] is False

        yield wait_for(lambda: len(got_bob) == 3, 10, "m2 and c3 delivered")
        assert sorted(m["body"] for m in got_bob) == [1, 2, 3]
        assert b.stats.connects == 1 and b.stats.duplicates_dropped == 0
        assert a.close_code is None
        fresh = yield open_session(node, alice, "after-outage")
        fresh.protocol.sendClose(1000)
        print(
            f"\nredis stop: noticed in {noticed:.2f}s, ready again "
            f"{recovered:.2f}s after Redis started"
        )
    finally:
        if a.protocol is not None:
            a.protocol.sendClose(1000)
        b.stop()
        c.stop()


@pytest_twisted.inlineCallbacks
def test_hung_redis_times_out_and_recovers(
    node: Cluster, own_redis: OwnedService
) -> Any:
    """Redis stops answering without closing its socket (SIGSTOP): a send is
    answered with a retryable error within the timeout instead of hanging,
    readiness fails, and when Redis resumes the node recovers by itself."""
    alice, bob = users("alice", "bob")
    a = yield open_session(node, alice)
    pid = redis_pid(own_redis)
    try:
        os.kill(pid, signal.SIGSTOP)
        a.send_json({"type": "send", "id": "h1", "to": bob, "body": 1})
        sent_at = reactor.seconds()
        yield wait_for(lambda: reply_to(a, "h1", "error"), 2 * REDIS_TIMEOUT + 1, "h1")
        answered = reactor.seconds() - sent_at
        assert reply_to(a, "h1", "error")["retry"] is True
        yield wait_for(lambda: ready_is(node, 503), NOTICE_BOUND, "readiness 503")
        yield assert_refused_with_1013(node, alice)
        yield task.deferLater(reactor, 2 * REDIS_TIMEOUT, lambda: None)
        assert a.close_code is None

        os.kill(pid, signal.SIGCONT)
        resumed_at = reactor.seconds()
        yield wait_for(lambda: ready_is(node, 200), RECOVERY_BOUND, "readiness 200")
        recovered = reactor.seconds() - resumed_at
        a.send_json({"type": "send", "id": "h1", "to": bob, "body": 1})
        yield wait_for(lambda: reply_to(a, "h1", "ack"), 5, "ack of h1")
        assert a.close_code is None
        print(
            f"\nredis hang: send answered in {answered:.2f}s, ready again "
            f"{recovered:.2f}s after Redis resumed"
        )
    finally:
        os.kill(pid, signal.SIGCONT)
        if a.protocol is not None:
            a.protocol.sendClose(1000)
