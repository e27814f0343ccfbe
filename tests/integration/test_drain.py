"""Graceful drain on real nodes behind a real HAProxy (invariant 6).

A node asked to drain (``POST /v1/admin/drain`` or SIGTERM) fails readiness,
moves its clients make-before-break to the other node, finishes what it
accepted, and exits; nothing accepted is lost, duplicated or refused.
"""

from __future__ import annotations

import secrets
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread

from tests.integration.conftest import RUN_DIR, Services
from tests.integration.lb import LocalHAProxy
from tests.integration.support import RawPeer, connect_raw, http_json, wait_for, within
from wsha import wire
from wsha.auth import mint_token
from wsha.client import GatewayClient
from wsha.loadgen import Traffic
from wsha.localcluster import LocalNode

TOKEN = "drain-test-token"
# A short drain: 2 s for HAProxy to see /readyz fail, clients told over 3 s,
# 3 s for each to move, 20 s at most in all.
DRAIN_SETTINGS = [
    f"--control-token={TOKEN}",
    "--drain-grace=2",
    "--drain-window=3",
    "--drain-move-timeout=3",
    "--drain-timeout=20",
]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class DrainPair:
    """Two nodes behind HAProxy, sharing one JWT secret."""

    nodes: list[LocalNode]
    balancer: LocalHAProxy
    secret: str

    def token(self, user: str) -> str:
        """A valid token for ``user``."""
        return mint_token(self.secret, user, 600)


@pytest.fixture
def drain_pair(services: Services, haproxy: LocalHAProxy) -> Iterator[DrainPair]:
    """Two fresh nodes with a short drain, in rotation behind HAProxy."""
    secret = secrets.token_urlsafe(32)
    tag = secrets.token_hex(3)
    nodes = [
        LocalNode(
            f"drain-{tag}-{i}",
            services.redis_url,
            services.kafka,
            secret,
            RUN_DIR,
            extra_args=list(DRAIN_SETTINGS),
        )
        for i in (1, 2)
    ]
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready()
            haproxy.add(node)
        for node in nodes:
            haproxy.wait_state(node, "up", 15)
        yield DrainPair(nodes, haproxy, secret)
    finally:
        for node in nodes:
            node.kill()


def balancer_errors(balancer: LocalHAProxy) -> dict[str, int]:
    """HAProxy's own error counters that a refused client would raise."""
    front = balancer.counters("wsha", "FRONTEND")
    back = balancer.counters("wsha_nodes", "BACKEND")
    return {
        "frontend 5xx": front.responses_5xx,
        "frontend ereq": front.request_errors,
        "frontend dreq": front.denied_requests,
        "backend econ": back.connection_errors,
        "backend eresp": back.response_errors,
        "backend 5xx": back.responses_5xx,
    }


@defer.inlineCallbacks
def traffic_on(pair: DrainPair, users: int = 40) -> Any:
    """Connected users exchanging messages through HAProxy, over both nodes."""
    traffic = Traffic(
        reactor, lambda i: pair.balancer.ws_url, pair.token, users, rate=10.0
    )
    yield traffic.connect(60)
    traffic.start_sending()
    yield wait_for(lambda: traffic.report().accepted > 2 * users, 20, "traffic")
    return traffic


def node_of(client: GatewayClient) -> str | None:
    """The node that welcomed ``client``'s current link."""
    return None if client.welcome is None else str(client.welcome["node"])


@defer.inlineCallbacks
def drain_and_check(pair: DrainPair, ask: Any) -> Any:
    """Run traffic, drain the node holding most clients with ``ask(node)``,
    and check that every client moved and nothing was lost; fires with the
    drained node's exit code."""
    traffic = yield traffic_on(pair)
    try:
        stopped: list[int | None] = []
        for u in traffic.users:
            u.client.on_stopped = lambda code, reason: stopped.append(code)
        counts = {n.node_id: 0 for n in pair.nodes}
        for u in traffic.users:
            counts[str(node_of(u.client))] += 1
        victim = max(pair.nodes, key=lambda n: counts[n.node_id])
        survivor = next(n for n in pair.nodes if n is not victim)
        on_victim = [u for u in traffic.users if node_of(u.client) == victim.node_id]

        yield ask(victim)

        status, ready = yield http_json("GET", f"{victim.control_url}/readyz")
        assert (status, ready["draining"]) == (503, True)
        yield wait_for(
            lambda: http_json(
                "GET", f"{survivor.control_url}/v1/nodes", headers=AUTH
            ).addCallback(
                lambda answer: any(
                    n["id"] == victim.node_id and n["state"] == "draining"
                    for n in answer[1]["nodes"]
                )
            ),
            5,
            "the registry to say draining",
        )
        code = yield deferToThread(victim.wait_exit, 30)

        yield wait_for(
            lambda: all(node_of(u.client) == survivor.node_id for u in traffic.users),
            10,
            "every client on the survivor",
        )
        yield wait_for(
            lambda: traffic.report().accepted > 3 * len(traffic.users) + 100,
            20,
            "traffic after the drain",
        )
        traffic.stop_sending()
        yield wait_for(traffic.settled, 30, "every accepted message delivered")

        report = traffic.report()
        print(f"\ndrain: {len(on_victim)} clients moved; {report}")
        assert report.clean, report
        assert report.rejected == 0
        assert stopped == []
        assert all(u.client.stats.moves == 1 for u in on_victim)
        # No client was refused or cut off: the only closes are the old links'
        # 4001 after each client's own move.
        closes: dict[int, int] = {}
        for u in traffic.users:
            for close_code, count in u.client.stats.closes.items():
                closes[close_code] = closes.get(close_code, 0) + count
        assert set(closes) <= {wire.CLOSE_TAKEN_OVER}, closes
        errors = yield deferToThread(balancer_errors, pair.balancer)
        if any(errors.values()):
            print(pair.balancer.log_tail(80))
        assert not any(errors.values()), errors
        return code
    finally:
        traffic.stop()


@pytest_twisted.inlineCallbacks
def test_admin_drain_moves_every_client_and_exits(drain_pair: DrainPair) -> Any:
    """POST /v1/admin/drain answers 202 at once; the node fails readiness, says
    draining in the registry, moves each client to the other node before
    closing its old link, and exits by itself with status 0."""
    answers: list[Any] = []

    @defer.inlineCallbacks
    def ask(node: LocalNode) -> Any:
        status, body = yield http_json(
            "POST", f"{node.control_url}/v1/admin/drain", {}, AUTH
        )
        answers.append((status, body))

    code = yield drain_and_check(drain_pair, ask)

    status, body = answers[0]
    assert status == 202
    assert body["started"] is True and body["window_ms"] == 3000
    assert code == 0


@pytest_twisted.inlineCallbacks
def test_sigterm_drains_the_same_way(drain_pair: DrainPair) -> Any:
    """SIGTERM (twistd's normal stop) runs the same drain before the node stops."""

    def ask(node: LocalNode) -> Any:
        assert node.process is not None
        node.process.send_signal(signal.SIGTERM)
        return defer.succeed(None)

    code = yield drain_and_check(drain_pair, ask)

    # twistd ends a SIGTERM shutdown by re-raising the signal on itself.
    assert code in (0, -signal.SIGTERM)


@pytest_twisted.inlineCallbacks
def test_drain_needs_the_control_token(drain_pair: DrainPair) -> Any:
    """Without the control token the node answers 401 and keeps serving."""
    node = drain_pair.nodes[0]
    status, body = yield http_json("POST", f"{node.control_url}/v1/admin/drain", {})
    assert (status, body["error"]) == (401, "unauthorized")
    status, _ = yield http_json("GET", f"{node.control_url}/readyz")
    assert status == 200


@defer.inlineCallbacks
def open_raw(pair: DrainPair, node: LocalNode, user: str) -> Any:
    """A raw WebSocket of ``user`` straight to ``node``, once welcomed."""
    url = f"{node.ws_url}?token={pair.token(user)}&session=old-client"
    peer: RawPeer = yield within(connect_raw(url))
    yield within(peer.opened)
    yield wait_for(lambda: peer.of_type("welcome"), 10, "welcome")
    return peer


@pytest_twisted.inlineCallbacks
def test_client_that_ignores_the_frame_is_closed_with_1012_and_its_sends_stored(
    drain_pair: DrainPair,
) -> Any:
    """A client that does not know ``reconnect`` keeps its link until the move
    timeout, and every send and publish it makes meanwhile is acknowledged and
    stored once; then the node closes the link with 1012."""
    node = drain_pair.nodes[0]
    sender, reader = f"old-{secrets.token_hex(3)}", f"rd-{secrets.token_hex(3)}"
    room = f"room-{secrets.token_hex(3)}"
    peer = yield open_raw(drain_pair, node, sender)
    peer.send_json({"type": "subscribe", "id": "s1", "group": room})
    yield wait_for(lambda: peer.of_type("subscribed"), 10, "subscribed")

    status, _ = yield http_json("POST", f"{node.control_url}/v1/admin/drain", {}, AUTH)
    assert status == 202
    yield wait_for(lambda: peer.of_type("reconnect"), 10, "the reconnect frame")
    assert peer.of_type("reconnect") == [
        {"type": "reconnect", "reason": "draining", "within_ms": 3000}
    ]
    for seq in range(50):
        peer.send_json({"type": "send", "to": reader, "id": f"c{seq}", "body": seq})
    for seq in range(10):
        peer.send_json({"type": "publish", "id": f"p{seq}", "group": room, "body": seq})
    yield wait_for(lambda: len(peer.of_type("ack")) == 60, 5, "60 acks")

    code, _ = yield within(peer.closed, 10)
    assert code == wire.CLOSE_RESTARTING
    yield deferToThread(node.wait_exit, 30)

    got: list[dict[str, Any]] = []
    other = drain_pair.nodes[1]
    reading = GatewayClient(
        reactor, other.ws_url, lambda: drain_pair.token(reader), "r1", got.append
    )
    reading.start()
    try:
        yield wait_for(lambda: len(got) >= 50, 10, "the 50 sends in the inbox")
        assert [m["body"] for m in got] == list(range(50))
        assert all(not a["duplicate"] for a in peer.of_type("ack"))
    finally:
        reading.stop()
