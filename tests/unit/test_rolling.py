"""Unit tests for :mod:`wsha.rolling`: the order of a rolling update's steps,
with a fake runtime API and fake node processes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from wsha.haproxy import NodeEndpoint
from wsha.rolling import API, SIGNAL, RestartTimes, RollingUpdate, RollingUpdateError
from wsha.rolling import format_table as table


@dataclass
class FakeSlot:
    """A slot's state as :meth:`RuntimeAPI.find` returns it."""

    state: str


class FakeAPI:
    """HAProxy's runtime API: records calls; a slot is UP unless drained."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.drained: set[str] = set()

    def drain(self, target: str) -> None:
        """Record the drain."""
        self.log.append(f"lb drain {target}")
        self.drained.add(target)

    def add(self, node: NodeEndpoint) -> None:
        """Record the node's return to rotation."""
        target = f"{node.host}:{node.ws_port}"
        self.log.append(f"lb add {target}")
        self.drained.discard(target)

    def find(self, target: str) -> FakeSlot:
        """UP unless drained."""
        return FakeSlot("drain" if target in self.drained else "up")


@dataclass
class FakeNode:
    """A node process: stops, exits, starts and gets ready on demand."""

    node_id: str
    ws_port: int
    log: list[str]
    control_port: int = 9000
    exit_code: int = 0
    process: Any = field(default_factory=object)

    @property
    def control_url(self) -> str:
        """Where its control API would be."""
        return f"http://127.0.0.1:{self.control_port}"

    def stop(self, timeout: float) -> int:
        """SIGTERM and wait."""
        self.log.append(f"sigterm {self.node_id}")
        return self.exit_code

    def wait_exit(self, timeout: float) -> int:
        """Wait for the exit after a drain request."""
        self.log.append(f"exited {self.node_id}")
        return 0

    def start(self) -> None:
        """Start the new process."""
        self.log.append(f"start {self.node_id}")

    def wait_ready(self, timeout: float) -> None:
        """Wait for /readyz."""
        self.log.append(f"ready {self.node_id}")

    def log_tail(self) -> str:
        """Nothing logged."""
        return ""


def update_of(nodes: list[FakeNode], log: list[str]) -> RollingUpdate:
    """A RollingUpdate over fakes; drain requests and registry reads are recorded."""
    update = RollingUpdate(FakeAPI(log), nodes, "t", report=lambda line: None)  # type: ignore[arg-type]
    update.request_drain = lambda node: log.append(f"post drain {node.node_id}") or {}  # type: ignore[method-assign]
    update._registered = lambda via: set()  # type: ignore[method-assign]
    return update


def test_each_node_leaves_rotation_drains_restarts_and_returns_in_turn() -> None:
    """Node by node: out of HAProxy first, then drained (SIGTERM or POST), then
    started, then back in HAProxy; the next node only after."""
    log: list[str] = []
    nodes = [FakeNode("a", 1, log), FakeNode("b", 2, log)]

    times = update_of(nodes, log).run([SIGNAL, API])

    assert log == [
        "lb drain 127.0.0.1:1",
        "sigterm a",
        "start a",
        "ready a",
        "lb add 127.0.0.1:1",
        "lb drain 127.0.0.1:2",
        "post drain b",
        "exited b",
        "start b",
        "ready b",
        "lb add 127.0.0.1:2",
    ]
    assert [(t.node, t.how) for t in times] == [("a", SIGNAL), ("b", API)]


def test_a_node_killed_after_its_drain_timeout_stops_the_update() -> None:
    """A node that had to be killed (it did not drain in time) is an error,
    and no other node is touched."""
    log: list[str] = []
    nodes = [FakeNode("a", 1, log, exit_code=-9), FakeNode("b", 2, log)]
    with pytest.raises(RollingUpdateError, match="exited with -9"):
        update_of(nodes, log).run(SIGNAL)
    assert "lb drain 127.0.0.1:2" not in log


def test_table_sums_the_steps() -> None:
    """The table has one line per node and the whole update's total."""
    text = table(
        [
            RestartTimes("a", SIGNAL, 0.0, 10.0, 1.0, 1.0, 0),
            RestartTimes("b", API, 0.0, 11.0, 2.0, 1.0, None),
        ]
    )
    lines = text.splitlines()
    assert len(lines) == 4
    assert lines[1].split()[-1] == "12.00"
    assert lines[-1].split()[-1] == "26.00"
