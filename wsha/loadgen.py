"""Numbered-message traffic between many clients, with loss and recovery accounting.

Used by the fault tests and benchmarks. Users come in pairs; each sends
numbered messages to its partner, keeping at most ``window`` unacknowledged.
A message counts as *accepted* once the gateway acknowledged it; every accepted
message must reach its recipient exactly once and in order, whatever happens
to nodes, links, Redis or Kafka in between.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from twisted.internet import defer, task

from wsha.client import GatewayClient, SendRejected


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (nearest rank), 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


@dataclass
class TrafficUser:
    """One user's side of the traffic: what it sent, what it received."""

    user: str
    partner: str
    client: GatewayClient
    next_seq: int = 0
    accepted: set[int] = field(default_factory=set)
    in_flight: int = 0
    received: list[int] = field(default_factory=list)
    welcomes: list[float] = field(default_factory=list)
    disconnects: list[float] = field(default_factory=list)
    rejected: int = 0
    # When each seq was handed to the client (monotonic), until delivered.
    sent_at: dict[int, float] = field(default_factory=dict)
    # (when sent, seconds from send to delivery) of each message received.
    latencies: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class TrafficReport:
    """What the traffic saw, over every user."""

    sent: int
    accepted: int
    delivered: int
    lost: int
    duplicated: int
    reordered: int
    server_duplicates: int
    rejected: int

    @property
    def clean(self) -> bool:
        """True if nothing accepted was lost, duplicated or reordered."""
        return not (
            self.lost or self.duplicated or self.reordered or self.server_duplicates
        )


class Traffic:
    """Pairs of users exchanging numbered messages through the gateway.

    :param reactor: the reactor.
    :param url_for: the WebSocket URL for the user with this index (through a
        balancer, or a given node).
    :param token_for: a fresh token for a user id.
    :param users: how many users (rounded up to an even number).
    :param rate: messages per second per user while sending.
    :param window: the most unacknowledged sends per user.
    :param slices: each second's sends are made in this many steps, each for
        a share of the users, rather than all at once (1: one burst).
    """

    def __init__(
        self,
        reactor: Any,
        url_for: Callable[[int], str],
        token_for: Callable[[str], str],
        users: int,
        rate: float = 5.0,
        window: int = 20,
        make_client: Callable[..., GatewayClient] = GatewayClient,
        slices: int = 1,
    ):
        self._reactor = reactor
        self._rate = rate
        self._window = window
        self._slices = max(1, slices)
        self._slice = 0
        self._loop: task.LoopingCall | None = None
        tag = secrets.token_hex(3)
        count = users + users % 2
        names = [f"load-{tag}-{i}" for i in range(count)]
        self.users: list[TrafficUser] = []
        for i, name in enumerate(names):
            partner = names[i + 1] if i % 2 == 0 else names[i - 1]
            received: list[int] = []
            client = make_client(
                reactor,
                url_for(i),
                lambda name=name: token_for(name),
                "dev",
                lambda frame, name=name: self._received(name, frame),
            )
            self.users.append(TrafficUser(name, partner, client, received=received))
        self._by_name = {u.user: u for u in self.users}
        for u in self.users:
            self._watch(u)

    def _received(self, name: str, frame: dict[str, Any]) -> None:
        u = self._by_name[name]
        seq = int(frame["body"]["seq"])
        u.received.append(seq)
        sent = self._by_name[u.partner].sent_at.pop(seq, None)
        if sent is not None:
            u.latencies.append((sent, time.monotonic() - sent))

    def _watch(self, u: TrafficUser) -> None:
        u.client.on_welcome = lambda frame, u=u: u.welcomes.append(time.monotonic())
        u.client.on_disconnected = lambda code, reason, u=u: u.disconnects.append(
            time.monotonic()
        )

    def connect(self, timeout: float = 60.0) -> defer.Deferred[Any]:
        """Start every client; fires once each has been welcomed."""
        for u in self.users:
            u.client.start()
        waits = [u.client.when_connected() for u in self.users]
        return defer.gatherResults(waits).addTimeout(timeout, self._reactor)

    def start_sending(self) -> None:
        """Send from every user at ``rate`` per second until :meth:`stop_sending`."""
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self._reactor
        self._loop.start(1.0 / (self._rate * self._slices), now=True)

    def stop_sending(self) -> None:
        """Stop making new messages (retries of unacknowledged ones go on)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _tick(self) -> None:
        # Users i with i % slices == this step's slice send now.
        step, self._slice = self._slice, (self._slice + 1) % self._slices
        for u in self.users[step :: self._slices]:
            if u.in_flight < self._window:
                self._send(u)

    def _send(self, u: TrafficUser) -> None:
        seq = u.next_seq
        u.next_seq += 1
        u.in_flight += 1
        u.sent_at[seq] = time.monotonic()
        d = u.client.send(u.partner, {"seq": seq}, client_id=f"{u.user}-{seq}")

        def accepted(_: Any) -> None:
            u.in_flight -= 1
            u.accepted.add(seq)

        def refused(reason: Any) -> None:
            u.in_flight -= 1
            u.rejected += 1
            reason.trap(SendRejected)

        d.addCallbacks(accepted, refused)

    def settled(self) -> bool:
        """True once every send is answered and every accepted one delivered."""
        if any(u.in_flight for u in self.users):
            return False
        return all(
            set(self._by_name[u.partner].received) >= u.accepted for u in self.users
        )

    def accepted_so_far(self) -> dict[str, set[int]]:
        """Each user's accepted seqs now, for :meth:`delivered_all`."""
        return {u.user: set(u.accepted) for u in self.users}

    def delivered_all(self, snapshot: dict[str, set[int]]) -> bool:
        """True once every message in ``snapshot`` reached its recipient."""
        return all(
            set(self._by_name[u.partner].received) >= snapshot[u.user]
            for u in self.users
        )

    def resumed_since(self, moment: float) -> bool:
        """True if every user that lost its link after ``moment`` is welcomed again."""
        for u in self.users:
            lost = [t for t in u.disconnects if t >= moment]
            if lost and not (u.client.welcome and u.welcomes[-1] > lost[0]):
                return False
        return True

    def recovery_times(self, moment: float) -> list[float]:
        """Seconds from ``moment`` to the first welcome after it, for each user
        whose link was lost after ``moment``."""
        times = []
        for u in self.users:
            if any(t >= moment for t in u.disconnects):
                after = [t for t in u.welcomes if t >= moment]
                if after:
                    times.append(after[0] - moment)
        return times

    def latencies(self, since: float = 0.0, until: float = float("inf")) -> list[float]:
        """Seconds from send to delivery of the messages sent between ``since``
        and ``until`` (monotonic times) and delivered so far."""
        return [
            took
            for u in self.users
            for sent, took in u.latencies
            if since <= sent <= until
        ]

    def report(self) -> TrafficReport:
        """Count sent, accepted, delivered, lost, duplicated and reordered."""
        sent = accepted = delivered = lost = duplicated = reordered = 0
        for u in self.users:
            got = self._by_name[u.partner].received
            sent += u.next_seq
            accepted += len(u.accepted)
            delivered += len(set(got))
            lost += len(u.accepted - set(got))
            duplicated += len(got) - len(set(got))
            reordered += sum(1 for a, b in pairwise(got) if b < a)
        return TrafficReport(
            sent=sent,
            accepted=accepted,
            delivered=delivered,
            lost=lost,
            duplicated=duplicated,
            reordered=reordered,
            server_duplicates=sum(
                u.client.stats.duplicates_dropped for u in self.users
            ),
            rejected=sum(u.rejected for u in self.users),
        )

    def stop(self) -> None:
        """Stop sending and close every client."""
        self.stop_sending()
        for u in self.users:
            u.client.stop()
