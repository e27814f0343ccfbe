"""Unit tests for :mod:`wsha.discovery`: rounds against a fake registry and HAProxy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.node_fakes import FakeNodeStore
from wsha.discovery import BackendSync, parse_args
from wsha.haproxy import (
    ADMIN_FORCED_DRAIN,
    ADMIN_FORCED_MAINT,
    FREE_ADDRESS,
    NodeEndpoint,
    RuntimeAPIError,
    Slot,
)
from wsha.nodes import NodeRecord
from wsha.rotation import WeightPolicy


class FakeRuntimeAPI:
    """A backend of slots in memory, changed as HAProxy's runtime API would."""

    def __init__(self, size: int = 3, socket_path: str = "/fake.sock"):
        self.socket_path = socket_path
        self.table = [
            Slot(f"node{i}", FREE_ADDRESS, 0, 0, "down", ADMIN_FORCED_MAINT, 1)
            for i in range(1, size + 1)
        ]
        self.calls: list[tuple[str, str]] = []
        self.broken = False

    def slots(self) -> list[Slot]:
        """Every slot; raises OSError while ``broken``."""
        if self.broken:
            raise OSError("connection refused")
        return list(self.table)

    def _index(self, target: str) -> int:
        for i, s in enumerate(self.table):
            if s.name == target or (not s.free and f"{s.address}:{s.port}" == target):
                return i
        raise RuntimeAPIError(f"no slot is {target}")

    def _put(self, i: int, **changes: Any) -> Slot:
        old = self.table[i]
        fields = {**old.__dict__, **changes}
        self.table[i] = Slot(**fields)
        return self.table[i]

    def add(self, node: NodeEndpoint) -> Slot:
        """Take the node's slot, or the first free one; ready (and up, as once
        HAProxy's health check has passed)."""
        self.calls.append(("add", f"{node.host}:{node.ws_port}"))
        try:
            i = self._index(f"{node.host}:{node.ws_port}")
        except RuntimeAPIError:
            free = [i for i, s in enumerate(self.table) if s.free]
            if not free:
                raise RuntimeAPIError("no free slot left") from None
            i = free[0]
        return self._put(
            i,
            address=node.host,
            port=node.ws_port,
            check_port=node.control_port,
            admin=0,
            operational="up",
        )

    def set_weight(self, target: str, weight: int) -> Slot:
        """Set the weight."""
        self.calls.append(("weight", target))
        return self._put(self._index(target), weight=weight)

    def drain(self, target: str) -> Slot:
        """Set the drain flag."""
        self.calls.append(("drain", target))
        return self._put(self._index(target), admin=ADMIN_FORCED_DRAIN)

    def remove(self, target: str) -> Slot:
        """Free the slot."""
        self.calls.append(("remove", target))
        return self._put(
            self._index(target),
            address=FREE_ADDRESS,
            port=0,
            check_port=0,
            admin=ADMIN_FORCED_MAINT,
        )


def run_here(function: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """Run a "blocking" call at once (the fakes do not block)."""
    return maybeDeferred(function, *args)


def register(store: FakeNodeStore, node: str, port: int, **fields: Any) -> None:
    """Register ``node`` at 127.0.0.1:``port`` (control on ``port + 1``)."""
    values: dict[str, Any] = {
        "id": node,
        "url": f"ws://127.0.0.1:{port}/ws",
        "control_url": f"http://127.0.0.1:{port + 1}",
        "version": "v1",
        "state": "ready",
        "connections": 0,
        "started_at": 0,
        "heartbeat_at": 0,
    }
    values.update(fields)
    store.registered[node] = NodeRecord(**values)
    store.known.add(node)


class BackendSyncTests(SynchronousTestCase):
    """Each round reads the registry and corrects every HAProxy."""

    def setUp(self) -> None:
        self.store = FakeNodeStore()
        self.api = FakeRuntimeAPI()
        self.sync = BackendSync(
            self.store,  # type: ignore[arg-type]
            [self.api],  # type: ignore[list-item]
            WeightPolicy({"v2": 25}),
            run_blocking=run_here,
        )

    def round(self) -> list[Any]:
        """One round; its changes."""
        changes: list[Any] = self.successResultOf(self.sync.round())
        return changes

    def held(self) -> dict[int, tuple[str, int]]:
        """Port to (state, weight) of every slot in use."""
        return {s.port: (s.state, s.weight) for s in self.api.table if not s.free}

    def test_ready_nodes_are_added_with_their_weights_once(self) -> None:
        """Two ready nodes are put in slots and weighed by label; a second round
        changes nothing."""
        register(self.store, "a", 8080)
        register(self.store, "b", 8090, version="v2")

        self.assertEqual(len(self.round()), 4)
        self.assertEqual(self.held(), {8080: ("up", 256), 8090: ("up", 85)})
        calls = len(self.api.calls)
        self.assertEqual(self.round(), [])
        self.assertEqual(len(self.api.calls), calls)

    def test_nodes_that_drain_or_leave_are_drained_or_removed(self) -> None:
        """A draining node's slot drains; a deregistered node's slot is freed."""
        register(self.store, "a", 8080)
        register(self.store, "b", 8090)
        register(self.store, "c", 8100)
        self.round()

        register(self.store, "b", 8090, state="draining")
        self.store.expire("c")
        self.round()

        self.assertEqual(self.held(), {8080: ("up", 256), 8090: ("drain", 256)})

    def test_a_registry_read_that_fails_changes_nothing(self) -> None:
        """With Redis down the round leaves HAProxy as it is."""
        register(self.store, "a", 8080)
        self.round()
        self.store.down = True
        self.assertEqual(self.round(), [])
        self.assertEqual(self.held(), {8080: ("up", 256)})

    def test_an_empty_registry_does_not_empty_haproxy(self) -> None:
        """No registration at all (Redis restarted empty) removes nothing: the
        nodes register again within a heartbeat."""
        register(self.store, "a", 8080)
        self.round()
        self.store.expire("a")
        self.assertEqual(self.round(), [])
        self.assertEqual(self.held(), {8080: ("up", 256)})

    def test_an_unreachable_haproxy_is_retried_next_round(self) -> None:
        """A round that cannot reach HAProxy logs it and the next one catches up."""
        register(self.store, "a", 8080)
        self.api.broken = True
        self.assertEqual(self.round(), [])
        self.api.broken = False
        self.assertEqual(len(self.round()), 2)

    def test_a_failed_step_does_not_stop_the_others(self) -> None:
        """With no free slot left, the addition fails and is reported; the other
        nodes are still handled, and the next round tries again."""
        self.api.table = self.api.table[:1]
        register(self.store, "a", 8080)
        register(self.store, "b", 8090)
        changes = self.round()
        errors = [outcome for _, outcome in changes if outcome[2] is not None]
        self.assertEqual(len(errors), 2)  # b's add, and b's weight after it
        self.assertEqual(self.held(), {8080: ("up", 256)})


def test_options_check_interval_and_canary_shares() -> None:
    """A zero interval or an impossible policy is a usage error."""
    args = parse_args(["--haproxy-socket", "/s", "--canary", "v2=10"])
    assert args.policy.shares == {"v2": 10.0} and args.interval == 1.0
    for bad in (["--interval", "0"], ["--canary", "v2=120"]):
        with pytest.raises(SystemExit):
            parse_args(["--haproxy-socket", "/s", *bad])
