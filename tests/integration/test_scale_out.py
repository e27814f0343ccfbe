"""Scaling out: a node added at run time, then a share of the busy nodes' users
moved onto it with ``wsha-admin move``, through a real HAProxy, losing nothing."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.threads import deferToThread

from tests.integration.conftest import Services
from tests.integration.lb import LocalHAProxy
from tests.integration.private_cluster import (
    PrivateRegistry,
    admin_json,
    private_registry,
    running_companion,
    wait_serving,
)
from tests.integration.support import http_json, wait_for, within
from wsha import wire
from wsha.client import GatewayClient

USERS = 8
MAX_BATCHES = 400
"""The sender stops after this many batches (one message per user each) at most."""


@pytest.fixture
def registry(services: Services) -> Iterator[PrivateRegistry]:
    """Nodes on a Redis of their own; stopped after the test."""
    with private_registry(services) as running:
        yield running


def seqs(got: list[dict[str, Any]]) -> list[int]:
    """The ``seq`` of each message received, in arrival order."""
    return [m["body"]["seq"] for m in got]


@pytest_twisted.inlineCallbacks
def test_move_sends_a_share_of_busy_nodes_users_to_a_new_node(
    registry: PrivateRegistry, haproxy: LocalHAProxy
) -> Any:
    """Eight clients spread over two nodes; a third node joins through the
    discovery companion; moving half of each busy node's sessions over two
    seconds closes four of them with 1012, they reconnect through HAProxy and
    land on the new node, and every client receives every message sent
    throughout, in order and once."""
    from twisted.internet import reactor

    first = yield deferToThread(registry.start_node)
    second = yield deferToThread(registry.start_node)
    with running_companion(registry, haproxy):
        for node in (first, second):
            yield deferToThread(wait_serving, haproxy, node)

        users = [f"move-{secrets.token_hex(4)}" for _ in range(USERS)]
        got: dict[str, list[Any]] = {u: [] for u in users}
        clients = {}
        for user in users:
            c = GatewayClient(
                reactor,
                haproxy.ws_url,
                lambda u=user: registry.token(u),
                "dev",
                got[user].append,
            )
            c.start()
            clients[user] = c
            # One at a time, so that leastconn sees each before the next.
            yield within(c.when_connected())
        try:
            placed = [c.welcome["node"] for c in clients.values()]  # type: ignore[index]
            assert sorted(placed) == sorted([first.node_id, second.node_id] * 4)

            third = yield deferToThread(registry.start_node)
            yield deferToThread(wait_serving, haproxy, third)

            sent = 0

            @defer.inlineCallbacks
            def send_batch() -> Any:
                nonlocal sent
                answers = yield defer.gatherResults(
                    [
                        http_json(
                            "POST",
                            f"{third.control_url}/v1/send",
                            {"to": u, "id": f"m-{sent}", "body": {"seq": sent}},
                            {"Authorization": f"Bearer {registry.control_token}"},
                        )
                        for u in users
                    ]
                )
                assert all(status == 200 for status, _ in answers), answers
                sent += 1

            yield send_batch()
            moves = yield defer.gatherResults(
                [
                    deferToThread(
                        admin_json,
                        registry,
                        node,
                        "move",
                        node.node_id,
                        "--share",
                        "0.5",
                        "--over",
                        "2",
                    )
                    for node in (first, second)
                ]
            )
            assert [m["moving"] for m in moves] == [2, 2]

            def reconnected() -> int:
                return sum(c.stats.connects - 1 for c in clients.values())

            # Keep sending while the sessions move, and a little after.
            while reconnected() < 4 or any(c.welcome is None for c in clients.values()):
                assert sent < MAX_BATCHES, "the moved clients did not come back"
                yield send_batch()
            for _ in range(10):
                yield send_batch()

            yield wait_for(
                lambda: all(len(g) >= sent for g in got.values()),
                15,
                "every message at every client",
            )
            for user in users:
                assert seqs(got[user]) == list(range(sent)), user
                assert clients[user].stats.duplicates_dropped == 0
            moved = [c for c in clients.values() if c.stats.connects == 2]
            assert len(moved) == 4
            assert all(c.stats.closes == {wire.CLOSE_RESTARTING: 1} for c in moved)
            landed = [c.welcome["node"] for c in moved]  # type: ignore[index]
            print(f"moved sessions landed on: {landed}; {sent} messages each")
            assert landed.count(third.node_id) >= 2
            front = yield deferToThread(haproxy.counters, "wsha", "FRONTEND")
            assert front.responses_5xx == 0 and front.request_errors == 0
        finally:
            for c in clients.values():
                c.stop()
