"""``python -m wsha.admin`` against real nodes: status, user, kick, broadcast, drain."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.threads import deferToThread

from tests.integration.conftest import Services
from tests.integration.private_cluster import (
    PrivateRegistry,
    admin,
    admin_json,
    private_registry,
)
from tests.integration.support import RawPeer, connect_raw, wait_for, within
from wsha import wire
from wsha.admin_client import urllib_transport
from wsha.client import GatewayClient
from wsha.gateway import KICKED
from wsha.localcluster import LocalNode


@pytest.fixture(scope="module")
def registry(services: Services) -> Iterator[PrivateRegistry]:
    """Two nodes, labelled blue and green, on a Redis of their own."""
    with private_registry(services) as running:
        running.start_node("--version-label", "blue")
        running.start_node("--version-label", "green")
        yield running


@defer.inlineCallbacks
def open_raw(
    registry: PrivateRegistry, node: LocalNode, user: str, session: str
) -> Any:
    """A raw connection of ``user``/``session`` to ``node``, once welcomed."""
    url = f"{node.ws_url}?token={registry.token(user)}&session={session}"
    peer: RawPeer = yield within(connect_raw(url))
    yield within(peer.opened)
    yield wait_for(lambda: peer.of_type("welcome"), 10, "welcome")
    return peer


def fresh_user() -> str:
    """A user id no other test uses."""
    return f"adm-{secrets.token_hex(4)}"


@pytest_twisted.inlineCallbacks
def test_status_shows_every_node_with_version_readiness_and_load(
    registry: PrivateRegistry,
) -> Any:
    """Asked through either node, status lists both nodes, ready, with their
    version labels and live connection counts."""
    blue, green = registry.nodes
    peer = yield open_raw(registry, blue, fresh_user(), "dev")

    def counted() -> Any:
        listing = admin_json(registry, green, "status")
        by_id = {n["id"]: n for n in listing["nodes"]}
        return listing if by_id[blue.node_id]["connections"] == 1 else None

    listing = yield wait_for(lambda: deferToThread(counted), 10, "blue's connection")
    by_id = {n["id"]: n for n in listing["nodes"]}
    assert set(by_id) == {blue.node_id, green.node_id}
    assert (by_id[blue.node_id]["version"], by_id[green.node_id]["version"]) == (
        "blue",
        "green",
    )
    assert listing["ready"] == {blue.node_id: True, green.node_id: True}

    status, text = yield deferToThread(admin, registry, blue, "status")
    assert status == 0, text
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line}
    assert rows[blue.node_id][1:5] == ["ready", "yes", "blue", "1"]
    peer.protocol.sendClose(1000)
    yield within(peer.closed)


@pytest_twisted.inlineCallbacks
def test_kick_closes_sessions_on_every_node_and_stops_the_python_client(
    registry: PrivateRegistry,
) -> Any:
    """One user with a Python client on blue and a raw connection on green:
    ``user`` shows both; ``kick`` through blue closes both with 1008 (the
    green one through green's Kafka topic), the Python client stops instead of
    reconnecting, and the CLI returns once both are offline."""
    from twisted.internet import reactor

    blue, green = registry.nodes
    user = fresh_user()
    stopped: list[tuple[int | None, str | None]] = []
    python_client = GatewayClient(
        reactor, blue.ws_url, lambda: registry.token(user), "laptop", lambda _: None
    )
    python_client.on_stopped = lambda code, reason: stopped.append((code, reason))
    python_client.start()
    try:
        yield within(python_client.when_connected())
        raw = yield open_raw(registry, green, user, "phone")

        found = yield deferToThread(admin_json, registry, blue, "user", user)
        where = {s["session"]: s["node"] for s in found["sessions"] if s["online"]}
        assert where == {"laptop": blue.node_id, "phone": green.node_id}

        status, out = yield deferToThread(admin, registry, blue, "kick", user)
        assert status == 0, out
        assert f"{user}/phone on {green.node_id}: closed" in out
        assert f"{user}/laptop on {blue.node_id}: closed" in out

        code, reason = yield within(raw.closed)
        assert (code, reason) == (wire.CLOSE_POLICY, KICKED)
        yield wait_for(lambda: stopped, 10, "the Python client to stop")
        assert stopped == [(wire.CLOSE_POLICY, KICKED)]
        assert python_client.stats.connects == 1

        found = yield deferToThread(admin_json, registry, green, "user", user)
        assert not any(s["online"] for s in found["sessions"])
    finally:
        python_client.stop()


@pytest_twisted.inlineCallbacks
def test_broadcast_from_the_cli_reaches_connected_clients(
    registry: PrivateRegistry,
) -> Any:
    """``broadcast --audience all`` stores one broadcast that a client of the
    other node receives; the same id again is a duplicate."""
    blue, green = registry.nodes
    peer = yield open_raw(registry, green, fresh_user(), "dev")
    message_id = f"it-{secrets.token_hex(4)}"

    sent = yield deferToThread(
        admin_json,
        registry,
        blue,
        "broadcast",
        "--audience",
        "all",
        "--id",
        message_id,
        '{"text": "maintenance at 02:00"}',
    )
    assert sent["duplicate"] is False
    yield wait_for(lambda: peer.of_type("broadcast"), 10, "the broadcast")
    frame = peer.of_type("broadcast")[0]
    assert (frame["id"], frame["body"]) == (
        sent["id"],
        {"text": "maintenance at 02:00"},
    )

    again = yield deferToThread(
        admin_json,
        registry,
        blue,
        "broadcast",
        "--audience",
        "all",
        "--id",
        message_id,
        '{"text": "maintenance at 02:00"}',
    )
    assert again == {"id": sent["id"], "duplicate": True}
    peer.protocol.sendClose(1000)
    yield within(peer.closed)


@pytest_twisted.inlineCallbacks
def test_drain_from_the_cli_starts_the_nodes_drain(services: Services) -> Any:
    """``drain NODE --window 1`` reaches that node's drain command, which answers
    with the node and the window; the node then drains (registry state, or gone)."""
    with private_registry(services) as own:
        node = yield deferToThread(own.start_node)
        # A bad window changes nothing where the command exists; its absence
        # is Twisted's HTML 404.
        status, _ = yield deferToThread(
            urllib_transport,
            "POST",
            f"{node.control_url}/v1/admin/drain",
            {"window": -1},
            {"Authorization": f"Bearer {own.control_token}"},
            10.0,
        )
        if status == 404:
            pytest.skip("this build has no POST /v1/admin/drain")

        answer = yield deferToThread(
            admin_json, own, node, "drain", node.node_id, "--window", "1"
        )
        assert answer["node"] == node.node_id and answer["window"] == 1

        def drained() -> Any:
            status, listing = _get_nodes(own)
            if status != 200:
                return True  # the node stopped, and its API with it
            states = {n["id"]: n["state"] for n in listing["nodes"]}
            return states.get(node.node_id, "gone") in ("draining", "gone")

        yield wait_for(lambda: deferToThread(drained), 15, "the node to drain")


def _get_nodes(own: PrivateRegistry) -> tuple[int, Any]:
    try:
        return urllib_transport(
            "GET",
            f"{own.nodes[0].control_url}/v1/nodes",
            None,
            {"Authorization": f"Bearer {own.control_token}"},
            5.0,
        )
    except OSError:
        return 0, None
