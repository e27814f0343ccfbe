"""The inbox's edges on real Redis: trimming by length, and duplicate detection
that cannot confuse two senders."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.integration.conftest import Cluster, Services, start_nodes
from tests.integration.support import wait_for, within
from tests.integration.test_delivery import client, seqs, users
from wsha.client import GatewayClient

KEPT = 5


@pytest.fixture(scope="module")
def small_inboxes(services: Services) -> Iterator[Cluster]:
    """One node whose inboxes keep only the newest few messages."""
    running = start_nodes(services, 1, [f"--inbox-max-length={KEPT}"])
    yield running
    for node in running.nodes:
        node.stop()


@pytest_twisted.inlineCallbacks
def test_resume_past_trimmed_messages_says_truncated(small_inboxes: Cluster) -> Any:
    """A device that resumes from before messages the length limit removed is
    told so (``truncated``) and gets what is left, in order; one that resumes
    after the cut is not."""
    cluster = small_inboxes
    alice, bob = users("alice", "bob")
    a = client(cluster, 0, alice, "laptop", [])
    first: list[Any] = []
    b = client(cluster, 0, bob, "phone", first)
    yield within(a.when_connected())
    yield within(b.when_connected())
    yield within(a.send(bob, {"seq": 0}))
    yield wait_for(lambda: first, 10, "first message")
    old_id = first[0]["id"]
    b.stop()

    for seq in range(1, 11):
        yield within(a.send(bob, {"seq": seq}))

    late: list[Any] = []
    again = GatewayClient(
        reactor,
        cluster.nodes[0].ws_url,
        cluster.token(bob),
        "phone",
        late.append,
        after=old_id,
    )
    again.start()
    welcome = yield within(again.when_connected())
    yield wait_for(lambda: len(late) == KEPT, 10, "what is left")
    assert welcome["truncated"] is True
    assert welcome["replayed"] == KEPT
    assert seqs(late) == list(range(11 - KEPT, 11))
    again.stop()

    recent: list[Any] = []
    fine = GatewayClient(
        reactor,
        cluster.nodes[0].ws_url,
        cluster.token(bob),
        "tablet",
        recent.append,
        after=late[1]["id"],
    )
    fine.start()
    welcome = yield within(fine.when_connected())
    assert welcome["truncated"] is False
    assert welcome["replayed"] == KEPT - 2
    fine.stop()
    a.stop()


@pytest_twisted.inlineCallbacks
def test_senders_whose_ids_share_a_colon_are_not_taken_for_each_other(
    small_inboxes: Cluster,
) -> Any:
    """``a:b`` sending id ``c`` and ``a`` sending id ``b:c`` are two messages."""
    cluster = small_inboxes
    (bob,) = users("bob")
    tag = bob.rsplit("-", 1)[1]
    first_sender, second_sender = f"a{tag}:b", f"a{tag}"
    one = client(cluster, 0, first_sender, "s", [])
    two = client(cluster, 0, second_sender, "s", [])
    yield within(one.when_connected())
    yield within(two.when_connected())
    ack_one = yield within(one.send(bob, {"seq": 1}, client_id="c"))
    ack_two = yield within(two.send(bob, {"seq": 2}, client_id="b:c"))
    assert not ack_two["duplicate"]
    assert ack_one["inbox"] != ack_two["inbox"]
    one.stop()
    two.stop()
