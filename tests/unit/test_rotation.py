"""Unit tests for :mod:`wsha.rotation`: members, weights and the steps planned."""

from __future__ import annotations

import pytest

from wsha.haproxy import ADMIN_FORCED_DRAIN, ADMIN_FORCED_MAINT, FREE_ADDRESS, Slot
from wsha.nodes import NodeRecord
from wsha.rotation import (
    ADD,
    DRAIN,
    KEEP,
    READY_AGAIN,
    REMOVE,
    SERVE,
    WEIGHT,
    Member,
    Step,
    WeightPolicy,
    endpoint_of,
    members,
    plan,
)


def record(
    node: str,
    port: int,
    state: str = "ready",
    version: str = "0.1.0",
    host: str = "127.0.0.1",
    heartbeat_at: int = 1,
) -> NodeRecord:
    """A registration serving WebSockets on ``port`` and control on ``port + 1``."""
    return NodeRecord(
        node,
        f"ws://{host}:{port}/ws",
        f"http://{host}:{port + 1}",
        version,
        state,
        0,
        0,
        heartbeat_at,
    )


def slot(
    name: str,
    port: int = 0,
    admin: int = 0,
    weight: int = 256,
    check_port: int | None = None,
) -> Slot:
    """A slot holding ``127.0.0.1:port`` (free when ``port`` is 0)."""
    if port == 0:
        return Slot(name, FREE_ADDRESS, 0, 0, "down", ADMIN_FORCED_MAINT, 1)
    check = port + 1 if check_port is None else check_port
    return Slot(name, "127.0.0.1", port, check, "up", admin, weight)


def test_policy_gives_a_label_its_share_split_over_its_nodes() -> None:
    """``v2=25`` with one v2 node and one other: the weights stand 1 to 3, the
    largest at HAProxy's maximum."""
    assert WeightPolicy({"v2": 25}).weights(["v1", "v2"]) == [256, 85]
    # Two v1 nodes share their 75 %: each weighs 37.5 against v2's 25.
    assert WeightPolicy({"v2": 25}).weights(["v1", "v1", "v2"]) == [256, 256, 171]


def test_policy_without_shares_weighs_every_node_the_same() -> None:
    """No policy, or one naming labels no node has: equal weights."""
    assert WeightPolicy().weights(["a", "b", "c"]) == [256, 256, 256]
    assert WeightPolicy({"v9": 50}).weights(["a", "b"]) == [256, 256]


def test_policy_zero_keeps_a_label_out_and_hundred_takes_all() -> None:
    """0 % weighs 0 (no new connections); 100 % leaves the others at 0."""
    assert WeightPolicy({"green": 0}).weights(["blue", "green"]) == [256, 0]
    assert WeightPolicy({"green": 100}).weights(["blue", "green"]) == [0, 256]


def test_policy_never_leaves_the_balancer_nowhere_to_go() -> None:
    """If only 0 % labels have nodes, every node gets the same weight instead."""
    assert WeightPolicy({"green": 0}).weights(["green", "green"]) == [256, 256]


def test_policy_keeps_a_small_positive_share_above_zero() -> None:
    """A share that rounds to 0 still gets weight 1: it asked for some clients."""
    weights = WeightPolicy({"v2": 0.1}).weights(["v1"] * 3 + ["v2"])
    assert weights == [256, 256, 256, 1]


@pytest.mark.parametrize(
    "specs",
    [["v2"], ["=5"], ["v2=x"], ["v2=101"], ["a=60", "b=50"], ["a=1", "a=2"]],
)
def test_policy_refuses_what_it_cannot_honour(specs: list[str]) -> None:
    """Malformed specs, shares outside 0-100, over 100 in total or a label twice."""
    with pytest.raises(ValueError):
        WeightPolicy.parse(specs)


def test_policy_parses_label_equals_percent() -> None:
    """``LABEL=PERCENT`` strings, a trailing ``%`` allowed."""
    assert WeightPolicy.parse(["v2=10", "v3=5%"]).shares == {"v2": 10.0, "v3": 5.0}


def test_endpoint_comes_from_the_registered_urls() -> None:
    """WebSocket port from ``url``, check port from ``control_url``."""
    endpoint = endpoint_of(record("a", 8080))
    assert (endpoint.host, endpoint.ws_port, endpoint.control_port) == (
        "127.0.0.1",
        8080,
        8081,
    )


def test_members_skip_nodes_without_an_ip_address() -> None:
    """A node registered under a host name cannot be given to the runtime API; it
    is left out with the reason."""
    wanted, skipped = members([record("a", 8080, host="gw-1.internal")], WeightPolicy())
    assert wanted == [] and "no IP address" in skipped["a"]


def test_members_follow_the_node_states() -> None:
    """Ready nodes serve, draining ones drain, starting ones are left alone; only
    serving nodes take part in the weights."""
    records = [
        record("a", 8080, "ready", "v1"),
        record("b", 8090, "draining", "v2"),
        record("c", 8100, "starting", "v2"),
        record("d", 8110, "ready", "v2"),
    ]
    wanted, skipped = members(records, WeightPolicy({"v2": 25}))
    assert skipped == {}
    assert [(m.node_id, m.role) for m in wanted] == [
        ("a", SERVE),
        ("b", DRAIN),
        ("c", KEEP),
        ("d", SERVE),
    ]
    assert [m.weight for m in wanted if m.role == SERVE] == [256, 85]


def test_members_take_the_ready_registration_of_a_shared_address() -> None:
    """Two registrations of one address (a restart under a new id): the ready
    one is kept, the other skipped."""
    wanted, skipped = members(
        [record("old", 8080, "draining"), record("new", 8080, "ready")],
        WeightPolicy(),
    )
    assert [m.node_id for m in wanted] == ["new"] and "old" in skipped


def member(node: str, port: int, role: str = SERVE, weight: int = 256) -> Member:
    """A member at ``127.0.0.1:port`` (control on ``port + 1``)."""
    return Member(node, endpoint_of(record(node, port)), "0.1.0", role, weight)


def test_plan_adds_a_new_node_and_weighs_it() -> None:
    """A serving node in no slot is added, then given its weight."""
    steps = plan([member("a", 8080, weight=85)], [slot("node1")])
    assert [(s.action, s.target) for s in steps] == [
        (ADD, "127.0.0.1:8080"),
        (WEIGHT, "127.0.0.1:8080"),
    ]
    assert steps[1].weight == 85


def test_plan_is_empty_once_haproxy_matches() -> None:
    """Nothing to do when every slot already holds what the registry says."""
    assert plan([member("a", 8080)], [slot("node1", 8080), slot("node2")]) == []


def test_plan_removes_slots_of_nodes_gone_from_the_registry_first() -> None:
    """A slot no registration accounts for is freed, before any addition."""
    steps = plan([member("b", 8090)], [slot("node1", 8080), slot("node2")])
    assert [(s.action, s.target) for s in steps] == [
        (REMOVE, "node1"),
        (ADD, "127.0.0.1:8090"),
        (WEIGHT, "127.0.0.1:8090"),
    ]


def test_plan_drains_a_draining_node_once() -> None:
    """A draining node's slot is set to drain, and left alone once it is."""
    steps = plan([member("a", 8080, DRAIN)], [slot("node1", 8080)])
    assert steps == [Step(DRAIN, "127.0.0.1:8080", "a")]
    drained = slot("node1", 8080, admin=ADMIN_FORCED_DRAIN)
    assert plan([member("a", 8080, DRAIN)], [drained]) == []


def test_plan_does_not_add_draining_or_starting_nodes() -> None:
    """Nodes that are not ready are never put into a slot."""
    wanted = [member("a", 8080, DRAIN), member("b", 8090, KEEP)]
    assert plan(wanted, [slot("node1")]) == []
    assert plan(wanted[1:], [slot("node1", 8090, admin=ADMIN_FORCED_MAINT)]) == []


def test_plan_readies_a_serving_node_found_drained_and_reweighs() -> None:
    """A ready node in a drained or maintenance slot is made ready again, and a
    weight that differs from the policy's is corrected."""
    steps = plan(
        [member("a", 8080, weight=85)],
        [slot("node1", 8080, admin=ADMIN_FORCED_DRAIN, weight=256)],
    )
    assert [s.action for s in steps] == [READY_AGAIN, WEIGHT]


def test_plan_readds_a_node_whose_control_port_changed() -> None:
    """A node restarted on the same WebSocket port with another control port is
    added again, which moves its health check."""
    steps = plan([member("a", 8080)], [slot("node1", 8080, check_port=9999)])
    assert [s.action for s in steps] == [ADD]
