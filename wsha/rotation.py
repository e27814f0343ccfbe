"""Which nodes the balancer should hold, with what weight, and the steps to get there.

The discovery companion (:mod:`wsha.discovery`) reads the node registry and
hands it here: :func:`members` turns registrations into the servers HAProxy
should have (ready nodes serve, draining nodes drain, starting ones are left
as they are), :class:`WeightPolicy` sets each serving node's weight from its
version label, and :func:`plan` compares that with HAProxy's slots and lists
the runtime API steps that close the gap. Planning is pure; :func:`apply`
runs one step on a :class:`~wsha.haproxy.RuntimeAPI` and blocks.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from wsha.haproxy import (
    ADMIN_FORCED_DRAIN,
    ADMIN_FORCED_MAINT,
    MAX_WEIGHT,
    NodeEndpoint,
    RuntimeAPI,
    Slot,
)
from wsha.nodes import DRAINING, READY, STARTING, NodeRecord

SERVE = "serve"
DRAIN = "drain"
KEEP = "keep"
"""What the balancer should do with a node: send it clients, send it no new
ones (its open connections stay), or leave its slot as it is."""

ADD = "add"
READY_AGAIN = "ready"
WEIGHT = "weight"
REMOVE = "remove"
"""Runtime API steps besides :data:`DRAIN`."""

_DEFAULT_PORTS = {"ws": 80, "wss": 443, "http": 80, "https": 443}
_PREFERENCE = {READY: 0, DRAINING: 1, STARTING: 2}


class WeightPolicy:
    """Shares of new connections by version label; the other labels share the rest.

    ``WeightPolicy({"v2": 10})`` gives the nodes labelled ``v2``, together, 10 %
    of new connections and every other node the remaining 90 %, split evenly
    within each group. A group with no node serving drops out and the others
    keep their proportions; if what is left asks for 0 % everywhere, every node
    gets the same weight, so that the balancer never has nowhere to send a
    client. With ``balance leastconn`` a weight is the share of open
    connections a node is filled to, so new ones follow it.

    :param shares: percent (0-100) of new connections per label; at most 100
        in total.
    """

    def __init__(self, shares: Mapping[str, float] | None = None):
        self.shares = dict(shares or {})
        for label, percent in self.shares.items():
            if not 0 <= percent <= 100:
                raise ValueError(f"share of {label} must be 0-100, not {percent}")
        if sum(self.shares.values()) > 100:
            raise ValueError("shares add up to more than 100 %")

    @classmethod
    def parse(cls, specs: Iterable[str]) -> WeightPolicy:
        """Build from ``LABEL=PERCENT`` strings (the ``--canary`` option)."""
        shares: dict[str, float] = {}
        for spec in specs:
            label, sep, percent = spec.partition("=")
            if not sep or not label:
                raise ValueError(f"{spec!r} is not LABEL=PERCENT")
            if label in shares:
                raise ValueError(f"label {label} given twice")
            try:
                shares[label] = float(percent.rstrip("%"))
            except ValueError:
                raise ValueError(f"{spec!r}: {percent!r} is not a number") from None
        return cls(shares)

    def weights(self, labels: Sequence[str]) -> list[int]:
        """The HAProxy weight (0-256) of each node, given the nodes' labels."""
        rest = 100.0 - sum(self.shares.values())
        groups: dict[str | None, int] = {}
        for label in labels:
            key = label if label in self.shares else None
            groups[key] = groups.get(key, 0) + 1
        percent = {key: rest if key is None else self.shares[key] for key in groups}
        if sum(percent.values()) <= 0:
            return [MAX_WEIGHT] * len(labels)
        raw = [
            percent[label if label in self.shares else None]
            / groups[label if label in self.shares else None]
            for label in labels
        ]
        top = max(raw)
        return [
            max(1, round(share / top * MAX_WEIGHT)) if share > 0 else 0 for share in raw
        ]


@dataclass(frozen=True)
class Member:
    """A registered node as the balancer should hold it.

    :param node_id: the node's id.
    :param endpoint: its address, from its registered URLs.
    :param version: its version label.
    :param role: :data:`SERVE`, :data:`DRAIN` or :data:`KEEP`.
    :param weight: its weight while serving.
    """

    node_id: str
    endpoint: NodeEndpoint
    version: str
    role: str
    weight: int = MAX_WEIGHT

    @property
    def address(self) -> str:
        """``host:ws_port``, as the runtime API finds a server by."""
        return f"{self.endpoint.host}:{self.endpoint.ws_port}"


def endpoint_of(record: NodeRecord) -> NodeEndpoint:
    """The node's WebSocket and control addresses, from its registered URLs.

    :raises ValueError: if a URL has no IP address (HAProxy's runtime API takes
        none but addresses) or no usable port.
    """
    ws = urlsplit(record.url)
    control = urlsplit(record.control_url)
    host = ws.hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"registered URL {record.url!r} has no IP address; register one with "
            "--public-url"
        ) from None
    ws_port = ws.port or _DEFAULT_PORTS.get(ws.scheme)
    control_port = control.port or _DEFAULT_PORTS.get(control.scheme)
    if ws_port is None or control_port is None:
        raise ValueError(f"no port in {record.url!r} or {record.control_url!r}")
    return NodeEndpoint(host, ws_port, control_port)


def members(
    records: Iterable[NodeRecord], policy: WeightPolicy
) -> tuple[list[Member], dict[str, str]]:
    """The balancer's members from the registrations, and the nodes left out.

    The second value maps each node that cannot be placed to the reason. When
    two registrations claim one address (a node restarted on the same port
    under another id), the ready one, then the newest, wins.
    """
    skipped: dict[str, str] = {}
    chosen: dict[tuple[str, int], tuple[NodeRecord, NodeEndpoint]] = {}
    for record in records:
        try:
            endpoint = endpoint_of(record)
        except ValueError as e:
            skipped[record.id] = str(e)
            continue
        key = (endpoint.host, endpoint.ws_port)
        held = chosen.get(key)
        if held is None or _rank(record) < _rank(held[0]):
            if held is not None:
                skipped[held[0].id] = f"{record.id} registered the same address"
            chosen[key] = (record, endpoint)
        else:
            skipped[record.id] = f"{held[0].id} registered the same address"

    placed = sorted(chosen.values(), key=lambda pair: pair[0].id)
    serving = [record for record, _ in placed if record.state == READY]
    weights = dict(
        zip(
            (r.id for r in serving),
            policy.weights([r.version for r in serving]),
            strict=True,
        )
    )
    result = []
    for record, endpoint in placed:
        role = {READY: SERVE, DRAINING: DRAIN}.get(record.state, KEEP)
        weight = weights.get(record.id, MAX_WEIGHT)
        result.append(Member(record.id, endpoint, record.version, role, weight))
    return result, skipped


def _rank(record: NodeRecord) -> tuple[int, int]:
    return _PREFERENCE.get(record.state, 3), -record.heartbeat_at


@dataclass(frozen=True)
class Step:
    """One runtime API call that brings HAProxy closer to the registry.

    :param action: :data:`ADD`, :data:`READY_AGAIN`, :data:`WEIGHT`,
        :data:`DRAIN` or :data:`REMOVE`.
    :param target: the server: ``host:port``, or a slot name for a removal.
    :param node: the node id, or None for a slot no registration accounts for.
    :param endpoint: the node's addresses (for :data:`ADD`).
    :param weight: the new weight (for :data:`WEIGHT`).
    :param address: for a removal, the ``host:port`` the slot held.
    """

    action: str
    target: str
    node: str | None = None
    endpoint: NodeEndpoint | None = None
    weight: int | None = None
    address: str = ""


def plan(wanted: Sequence[Member], slots: Sequence[Slot]) -> list[Step]:
    """The steps that make ``slots`` hold ``wanted``; none when they already do.

    Removals come first, so that their slots are free for the additions.
    A slot no member accounts for is removed; its open connections stay.
    """
    by_address = {m.address: m for m in wanted}
    removals: list[Step] = []
    changes: list[Step] = []
    placed: set[str] = set()
    for slot in slots:
        if slot.free:
            continue
        address = f"{slot.address}:{slot.port}"
        member = by_address.get(address)
        if member is None or address in placed:
            removals.append(Step(REMOVE, slot.name, address=address))
            continue
        placed.add(address)
        changes.extend(_align(member, slot))
    for member in wanted:
        if member.role == SERVE and member.address not in placed:
            changes.append(Step(ADD, member.address, member.node_id, member.endpoint))
            changes.append(
                Step(WEIGHT, member.address, member.node_id, weight=member.weight)
            )
    return removals + changes


def _align(member: Member, slot: Slot) -> list[Step]:
    node, address = member.node_id, member.address
    if member.role == KEEP:
        return []
    if member.role == DRAIN:
        if slot.admin & (ADMIN_FORCED_DRAIN | ADMIN_FORCED_MAINT):
            return []
        return [Step(DRAIN, address, node)]
    steps = []
    if slot.check_port != member.endpoint.control_port:
        steps.append(Step(ADD, address, node, member.endpoint))
    elif slot.admin & (ADMIN_FORCED_DRAIN | ADMIN_FORCED_MAINT):
        steps.append(Step(READY_AGAIN, address, node, member.endpoint))
    if slot.weight != member.weight:
        steps.append(Step(WEIGHT, address, node, weight=member.weight))
    return steps


def apply(api: RuntimeAPI, step: Step) -> Slot:
    """Run ``step`` on ``api`` (blocking) and return the slot as it is after it.

    :raises RuntimeAPIError: if HAProxy refused or no slot was free.
    """
    if step.action in (ADD, READY_AGAIN):
        assert step.endpoint is not None
        return api.add(step.endpoint)
    if step.action == WEIGHT:
        assert step.weight is not None
        return api.set_weight(step.target, step.weight)
    if step.action == DRAIN:
        return api.drain(step.target)
    if step.action == REMOVE:
        return api.remove(step.target)
    raise ValueError(f"unknown step {step.action}")
