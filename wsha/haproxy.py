"""A client of HAProxy's runtime API, to put gateway nodes in and out of rotation.

``deploy/haproxy/wsha.cfg`` gives the backend ``wsha_nodes`` a fixed set of
slots (``node1`` .. ``node32``) that start without an address and in
maintenance. A node is put into a free slot by address (its WebSocket port,
and its control port for the ``/readyz`` health check), drained, and removed
again, all over the admin unix socket and without a reload.

Every call here blocks on that socket (one short command per connection, a few
milliseconds). Callers are scripts, test fixtures and tools, or Twisted code
that runs them with ``deferToThread``; never a node's reactor thread.

``python3 -m wsha.haproxy --socket PATH servers|stat|add|drain|remove`` is the
command line that ``scripts/haproxy`` uses.
"""

from __future__ import annotations

import argparse
import csv
import ipaddress
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass

BACKEND = "wsha_nodes"
FREE_ADDRESS = "0.0.0.0"

# srv_admin_state bits (HAProxy management guide, "show servers state").
ADMIN_FORCED_MAINT = 0x01
ADMIN_FORCED_DRAIN = 0x08

# srv_op_state values.
OPERATIONAL = {0: "down", 1: "starting", 2: "up", 3: "stopping"}

MAX_WEIGHT = 256
"""The largest server weight HAProxy takes; 0 sends a server no new connection."""


class RuntimeAPIError(Exception):
    """HAProxy refused a command, or answered something unexpected."""


@dataclass(frozen=True)
class NodeEndpoint:
    """Where a gateway node serves: its WebSocket port and its control port.

    :param host: an IP address (HAProxy's runtime API takes no host names).
    """

    host: str
    ws_port: int
    control_port: int

    def __post_init__(self) -> None:
        ipaddress.ip_address(self.host)
        for port in (self.ws_port, self.control_port):
            if not 0 < port < 65536:
                raise ValueError(f"bad port {port}")


@dataclass(frozen=True)
class Slot:
    """One server slot of the backend, from ``show servers state``."""

    name: str
    address: str
    port: int
    check_port: int
    operational: str
    admin: int
    weight: int = 1

    @property
    def free(self) -> bool:
        """True if no node is assigned (in maintenance, without an address)."""
        return bool(self.admin & ADMIN_FORCED_MAINT) and self.address == FREE_ADDRESS

    @property
    def state(self) -> str:
        """``free``, ``maint``, ``drain`` or the health: ``up``, ``down``..."""
        if self.free:
            return "free"
        if self.admin & ADMIN_FORCED_MAINT:
            return "maint"
        if self.admin & ADMIN_FORCED_DRAIN:
            return "drain"
        return self.operational


@dataclass(frozen=True)
class ProxyStats:
    """One row of ``show stat``: a frontend, a backend or a server.

    Counters are HAProxy's, since it started: ``connection_errors`` are failed
    connects to a node (retried elsewhere when possible), ``responses_5xx``
    include the 502/503/504 answers HAProxy made itself when it found no node.
    """

    proxy: str
    name: str
    status: str
    current_sessions: int
    total_sessions: int
    request_errors: int
    connection_errors: int
    response_errors: int
    denied_requests: int
    denied_responses: int
    retries: int
    redispatches: int
    responses_5xx: int
    check_status: str


def parse_servers_state(text: str) -> list[Slot]:
    """Parse the answer to ``show servers state`` (format version 1)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or lines[0].strip() != "1":
        raise RuntimeAPIError(f"unexpected servers state: {text[:200]!r}")
    header = [line for line in lines if line.startswith("#")]
    if not header:
        raise RuntimeAPIError("servers state without a header line")
    columns = header[0].lstrip("# ").split()
    slots = []
    for line in lines[1:]:
        if line.startswith("#"):
            continue
        row = dict(zip(columns, line.split(), strict=False))
        slots.append(
            Slot(
                name=row["srv_name"],
                address=row["srv_addr"],
                port=int(row["srv_port"]),
                check_port=int(row["srv_check_port"]),
                operational=OPERATIONAL.get(int(row["srv_op_state"]), "unknown"),
                admin=int(row["srv_admin_state"]),
                weight=int(row.get("srv_uweight", "1")),
            )
        )
    return slots


def _count(row: dict[str, str], column: str) -> int:
    value = row.get(column) or ""
    return int(value) if value.isdigit() else 0


def parse_stat(text: str) -> list[ProxyStats]:
    """Parse the CSV answer to ``show stat`` (also the stats page's ``;csv``)."""
    body = text.lstrip()
    if not body.startswith("# "):
        raise RuntimeAPIError(f"unexpected stat answer: {text[:200]!r}")
    reader = csv.DictReader(line for line in body[2:].splitlines() if line.strip())
    return [
        ProxyStats(
            proxy=row["pxname"],
            name=row["svname"],
            status=row.get("status") or "",
            current_sessions=_count(row, "scur"),
            total_sessions=_count(row, "stot"),
            request_errors=_count(row, "ereq"),
            connection_errors=_count(row, "econ"),
            response_errors=_count(row, "eresp"),
            denied_requests=_count(row, "dreq"),
            denied_responses=_count(row, "dresp"),
            retries=_count(row, "wretr"),
            redispatches=_count(row, "wredis"),
            responses_5xx=_count(row, "hrsp_5xx"),
            check_status=row.get("check_status") or "",
        )
        for row in reader
    ]


class RuntimeAPI:
    """HAProxy's runtime API on its unix socket, for the gateway's backend.

    Blocking: see the module docstring. Not safe for two writers at once
    (both could pick the same free slot); ``scripts/haproxy`` serializes with
    a lock.

    :param socket_path: the ``stats socket`` path (``level admin``).
    :param backend: the backend whose slots hold the nodes.
    :param timeout: seconds to wait for each answer.
    """

    def __init__(self, socket_path: str, backend: str = BACKEND, timeout: float = 5.0):
        self.socket_path = socket_path
        self.backend = backend
        self.timeout = timeout

    def execute(self, command: str) -> str:
        """Send one command line (``;`` separates several) and return the answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(self.timeout)
            conn.connect(self.socket_path)
            conn.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def slots(self) -> list[Slot]:
        """Every slot of the backend, free or not."""
        return parse_servers_state(self.execute(f"show servers state {self.backend}"))

    def stats(self) -> list[ProxyStats]:
        """Counters of every frontend, backend and server."""
        return parse_stat(self.execute("show stat"))

    def find(self, target: str) -> Slot:
        """The slot named ``target`` (``node3``) or holding ``host:port``."""
        for slot in self.slots():
            if slot.name == target or (
                not slot.free and f"{slot.address}:{slot.port}" == target
            ):
                return slot
        raise RuntimeAPIError(f"no slot is {target} in backend {self.backend}")

    def holds(self, target: str) -> bool:
        """True if a slot named ``target`` or holding ``host:port`` is in use."""
        try:
            return not self.find(target).free
        except RuntimeAPIError:
            return False

    def add(self, node: NodeEndpoint) -> Slot:
        """Put ``node`` in rotation and return its slot (idempotent).

        A node already in a slot is set back to ready there. A new node takes
        the first free slot and is marked down until its ``/readyz`` passes
        the health check, so it gets no connection before it is ready.
        """
        slots = self.slots()
        current = [
            s
            for s in slots
            if not s.free and (s.address, s.port) == (node.host, node.ws_port)
        ]
        free = [s for s in slots if s.free]
        if current:
            slot = current[0]
        elif free:
            slot = free[0]
        else:
            raise RuntimeAPIError(f"no free slot left in backend {self.backend}")
        server = f"{self.backend}/{slot.name}"

        answer = self.execute(
            f"set server {server} addr {node.host} port {node.ws_port}; "
            f"set server {server} check-port {node.control_port}"
        )
        if slot.admin & ADMIN_FORCED_MAINT:
            # HAProxy counts a server leaving maintenance as up: mark it down so
            # it takes no client before passing its checks.
            answer += self.execute(
                f"set server {server} state ready; set server {server} health down"
            )
        else:
            answer += self.execute(f"set server {server} state ready")

        added = self.find(slot.name)
        wanted = (node.host, node.ws_port, node.control_port)
        if (added.address, added.port, added.check_port) != wanted or added.admin & (
            ADMIN_FORCED_MAINT | ADMIN_FORCED_DRAIN
        ):
            raise RuntimeAPIError(f"adding {node} to {server} failed: {answer!r}")
        return added

    def set_weight(self, target: str, weight: int) -> Slot:
        """Give the node in ``target`` a share of new connections (0-256)."""
        if not 0 <= weight <= MAX_WEIGHT:
            raise ValueError(f"weight {weight} is not 0-{MAX_WEIGHT}")
        slot = self.find(target)
        answer = self.execute(f"set server {self.backend}/{slot.name} weight {weight}")
        changed = self.find(slot.name)
        if changed.weight != weight:
            raise RuntimeAPIError(f"weighting {slot.name} failed: {answer!r}")
        return changed

    def drain(self, target: str) -> Slot:
        """Send no new connection to the node in ``target``; open ones stay."""
        slot = self.find(target)
        answer = self.execute(f"set server {self.backend}/{slot.name} state drain")
        drained = self.find(slot.name)
        if not drained.admin & ADMIN_FORCED_DRAIN:
            raise RuntimeAPIError(f"draining {slot.name} failed: {answer!r}")
        return drained

    def remove(self, target: str, close_sessions: bool = False) -> Slot:
        """Take the node in ``target`` out of rotation and free its slot.

        Its open connections stay up (a node that is going away closes them
        itself, spread over time) unless ``close_sessions`` is set.
        """
        slot = self.find(target)
        server = f"{self.backend}/{slot.name}"
        answer = self.execute(f"set server {server} state maint")
        if close_sessions:
            answer += self.execute(f"shutdown sessions server {server}")
        answer += self.execute(
            f"set server {server} addr {FREE_ADDRESS} port 0; "
            f"set server {server} check-port 0"
        )
        removed = self.find(slot.name)
        if not removed.free:
            raise RuntimeAPIError(f"removing {slot.name} failed: {answer!r}")
        return removed


def _print_servers(api: RuntimeAPI) -> None:
    sessions = {
        s.name: s.current_sessions for s in api.stats() if s.proxy == api.backend
    }
    print(f"{'slot':<8} {'state':<9} {'address':<22} {'check':>6} {'sessions':>8}")
    for slot in api.slots():
        if slot.free:
            continue
        address = f"{slot.address}:{slot.port}"
        print(
            f"{slot.name:<8} {slot.state:<9} {address:<22} "
            f"{slot.check_port:>6} {sessions.get(slot.name, 0):>8}"
        )


def _print_stat(api: RuntimeAPI) -> None:
    print(
        f"{'proxy/name':<28} {'status':<10} {'cur':>5} {'total':>7} "
        f"{'econ':>5} {'ereq':>5} {'5xx':>5} {'retry':>5} {'redisp':>6}"
    )
    for row in api.stats():
        if row.proxy == api.backend and row.status == "MAINT":
            continue
        print(
            f"{row.proxy + '/' + row.name:<28} {row.status:<10} "
            f"{row.current_sessions:>5} {row.total_sessions:>7} "
            f"{row.connection_errors:>5} {row.request_errors:>5} "
            f"{row.responses_5xx:>5} {row.retries:>5} {row.redispatches:>6}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``--socket PATH servers|stat|add|drain|remove ...``."""
    parser = argparse.ArgumentParser(
        prog="python3 -m wsha.haproxy",
        description="Put wsha nodes in and out of HAProxy's rotation.",
    )
    parser.add_argument("--socket", required=True, help="HAProxy's admin socket")
    parser.add_argument("--backend", default=BACKEND)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("servers", help="slots that hold a node")
    commands.add_parser("stat", help="counters per frontend, backend and node")
    add = commands.add_parser("add", help="put a node in rotation")
    add.add_argument("host")
    add.add_argument("ws_port", type=int)
    add.add_argument("control_port", type=int)
    drain = commands.add_parser("drain", help="send a node no new connection")
    drain.add_argument("target", help="slot name or HOST:WS_PORT")
    remove = commands.add_parser("remove", help="take a node out, free its slot")
    remove.add_argument("target", help="slot name or HOST:WS_PORT")
    remove.add_argument(
        "--close-sessions", action="store_true", help="also cut its connections"
    )
    remove.add_argument(
        "--missing-ok", action="store_true", help="succeed if no slot holds it"
    )
    args = parser.parse_args(argv)

    api = RuntimeAPI(args.socket, args.backend)
    try:
        if args.command == "servers":
            _print_servers(api)
        elif args.command == "stat":
            _print_stat(api)
        elif args.command == "add":
            slot = api.add(NodeEndpoint(args.host, args.ws_port, args.control_port))
            print(slot.name)
        elif args.command == "drain":
            print(api.drain(args.target).name)
        elif args.missing_ok and not api.holds(args.target):
            print("")
        else:
            print(api.remove(args.target, args.close_sessions).name)
    except (OSError, RuntimeAPIError, ValueError) as e:
        print(f"wsha.haproxy: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
