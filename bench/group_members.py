"""A group's members as raw WebSocket clients, and the accounting of what they get.

Used by ``group_fanout.py``. Every member is one Autobahn client connection of
its own user, subscribed to one group; some of them publish numbered
messages. Each delivery is checked as it arrives (exactly once, in history
order, with the same history id every member saw) and timed against the
publish time carried in its body, on this process's one clock.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from direct_messages import cpu_seconds, summary
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import Logger

from wsha.auth import mint_token
from wsha.wire import stream_id_key

TICK = 0.005
"""Seconds between two rounds of paced publishes (``--rate``)."""

STALL = 10.0
"""Seconds without a delivery, all publishes out, after which the rest is lost."""

STEP_TIMEOUT = 30.0
"""Seconds one member may take to connect and subscribe."""

LEAVE_TIMEOUT = 5.0
"""Seconds the members get to unsubscribe, and then to close, at the end."""

WALL = "wall"
"""The key of a CPU reading that holds when it was taken."""

WARNINGS = 5
"""Errors and disconnects logged one by one; the rest are only counted."""

log = Logger()


@dataclass
class Member:
    """One member's connection and what it received.

    :param seen: one byte per message index, set once the member has it.
    :param last_seq: per publisher, the highest sequence number received.
    """

    index: int
    user: str
    url: str
    seen: bytearray
    last_seq: list[int]
    protocol: WebSocketClientProtocol | None = None
    waiting: dict[str, defer.Deferred[dict[str, Any]]] = field(default_factory=dict)
    last_id: tuple[int, int] = (0, 0)
    duplicated: int = 0
    reordered: int = 0
    closing: bool = False
    dropped: bool = False

    def expect(self, kind: str) -> defer.Deferred[dict[str, Any]]:
        """Fire with the next frame of type ``kind`` this member receives."""
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self.waiting[kind] = d
        return d

    def send(self, frame: dict[str, Any]) -> None:
        """Send one JSON text frame."""
        assert self.protocol is not None
        self.protocol.sendMessage(json.dumps(frame).encode(), isBinary=False)


@dataclass
class Publisher:
    """A member that publishes, with its own sequence numbers."""

    member: Member
    index: int
    quota: int = 0
    next_seq: int = 0


class MemberProtocol(WebSocketClientProtocol):
    """A raw client: every frame goes to the benchmark as JSON."""

    factory: MemberFactory

    def connectionMade(self) -> None:
        """Start the handshake with Nagle's algorithm off on the socket.

        Autobahn asks for TCP_NODELAY before it has copied the option from the
        factory, fails quietly and leaves Nagle on: a publish written while
        the previous one is unacknowledged would wait for the node's ACK.
        """
        super().connectionMade()
        self.transport.setTcpNoDelay(True)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """Hand a text frame to the benchmark."""
        self.factory.bench.on_frame(self.factory.member, json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """Tell the benchmark the connection is gone."""
        self.factory.bench.on_close(self.factory.member, code, reason)


class MemberFactory(WebSocketClientFactory):
    """Builds the one connection of one member."""

    protocol = MemberProtocol

    def __init__(self, bench: GroupFanoutBench, member: Member):
        super().__init__(member.url)
        self.bench = bench
        self.member = member
        # Load-generator CPU: the node's frames are trusted here. Closing a
        # thousand members at once keeps the nodes busy for more than 1 s.
        self.setProtocolOptions(
            utf8validateIncoming=False, closeHandshakeTimeout=LEAVE_TIMEOUT
        )


class GroupFanoutBench:
    """Drives one group's members on the reactor and collects one phase's figures.

    :param reactor: the reactor the clients run on.
    :param urls: the nodes' WebSocket URLs; members go round-robin over them.
    :param secret: the nodes' JWT secret.
    :param members: how many members.
    :param publishers: how many of them publish.
    :param capacity: the most messages the whole run publishes.
    :param window: incomplete messages per publisher when not paced.
    :param pids: processes whose CPU use is measured by name (None: this one).
    """

    def __init__(
        self,
        reactor: Any,
        urls: list[str],
        secret: str,
        members: int,
        publishers: int,
        capacity: int,
        window: int,
        pids: dict[str, int | None],
    ):
        self._reactor = reactor
        self._secret = secret
        self._window = window
        self._pids = pids
        run = secrets.token_hex(3)
        self.group = f"bench-{run}"
        self.members = [
            Member(
                i,
                f"gb-{run}-{i}",
                urls[i % len(urls)],
                bytearray(capacity),
                [-1] * publishers,
            )
            for i in range(members)
        ]
        self.publishers = [Publisher(self.members[i], i) for i in range(publishers)]
        # Per message index, over the whole run.
        self.sent_at: list[float] = []
        self.publisher_of: list[int] = []
        self.remaining: list[int] = []
        self.history: list[str | None] = []
        self.acked: dict[int, str] = {}
        self.refused: set[int] = set()
        self.mismatched = self.errors = self.disconnects = 0
        self._reset_phase()
        self._rate = 0.0
        self._cpu_start: dict[str, float] = {}
        self._cpu_end: dict[str, float] | None = None
        self._done: defer.Deferred[None] | None = None
        self._pacer: task.LoopingCall | None = None
        self._watch: task.LoopingCall | None = None
        self._closed = False

    def _reset_phase(self) -> None:
        self.latencies: list[float] = []
        self.completions: list[float] = []
        self.ack_latencies: list[float] = []
        self.first = len(self.sent_at)
        self.sent = self.delivered = self.completed = 0
        # Messages this phase publishes, and those it waits for (not refused).
        self.to_send = self.expected = 0
        now = time.perf_counter()
        self.started = self.last_sent = self.last_delivered = now

    # Connecting

    def connect(self, concurrency: int) -> defer.Deferred[Any]:
        """Connect and subscribe every member, ``concurrency`` at a time."""
        gate = defer.DeferredSemaphore(concurrency)
        return defer.gatherResults(
            [gate.run(self._join, m) for m in self.members], consumeErrors=True
        )

    @defer.inlineCallbacks
    def _join(self, member: Member) -> Any:
        token = mint_token(self._secret, member.user)
        member.url += f"?token={token}&session=m"
        factory = MemberFactory(self, member)
        endpoint = TCP4ClientEndpoint(
            self._reactor, factory.host, factory.port, timeout=10
        )
        welcomed = member.expect("welcome")
        member.protocol = yield endpoint.connect(factory)
        yield welcomed.addTimeout(STEP_TIMEOUT, self._reactor)
        subscribed = member.expect("subscribed")
        member.send({"type": "subscribe", "id": "s", "group": self.group})
        yield subscribed.addTimeout(STEP_TIMEOUT, self._reactor)

    # Publishing

    def run(self, count: int, rate: float) -> defer.Deferred[None]:
        """Publish ``count`` messages per publisher; fire once every member has all.

        Paced (``rate`` > 0) publishes go out round-robin over the publishers
        at ``rate`` per second in all; unpaced each publisher keeps ``window``
        messages that not every member has yet.
        """
        self._reset_phase()
        self._rate = rate
        self.to_send = self.expected = count * len(self.publishers)
        self._cpu_start, self._cpu_end = self._cpu_now(), None
        self._done = defer.Deferred()
        for publisher in self.publishers:
            publisher.quota += count
        if rate > 0:
            self._pacer = task.LoopingCall(self._paced, rate)
            self._pacer.clock = self._reactor
            self._pacer.start(TICK)
        else:
            for publisher in self.publishers:
                for _ in range(min(self._window, count)):
                    self._publish(publisher)
        self._watch = task.LoopingCall(self._check_stall)
        self._watch.clock = self._reactor
        self._watch.start(1.0, now=False)
        return self._done

    def _paced(self, rate: float) -> None:
        due = min(self.to_send, int((time.perf_counter() - self.started) * rate))
        while self.sent < due:
            self._publish(self.publishers[self.sent % len(self.publishers)])
        if self.sent >= self.to_send and self._pacer is not None:
            self._pacer.stop()
            self._pacer = None

    def _publish(self, publisher: Publisher) -> None:
        seq, publisher.next_seq = publisher.next_seq, publisher.next_seq + 1
        index = len(self.sent_at)
        sent_at = self.last_sent = time.perf_counter()
        self.sent_at.append(sent_at)
        self.publisher_of.append(publisher.index)
        self.remaining.append(len(self.members))
        self.history.append(None)
        self.sent += 1
        body = {"m": index, "p": publisher.index, "s": seq, "t": sent_at}
        publisher.member.send(
            {"type": "publish", "id": f"m{index}", "group": self.group, "body": body}
        )

    # What the members receive (the hot path: once per delivery)

    def on_frame(self, member: Member, frame: dict[str, Any]) -> None:
        """Account for one frame a member received."""
        kind = frame.get("type")
        if kind == "group_message":
            self._received(member, frame)
        elif kind == "ack":
            index = int(frame["id"][1:])
            self.acked[index] = frame["history"]
            if index >= self.first:
                self.ack_latencies.append(time.perf_counter() - self.sent_at[index])
        elif kind == "error":
            self._error(member, frame)
        waiting = member.waiting.pop(str(kind), None)
        if waiting is not None and not waiting.called:
            waiting.callback(frame)

    def _error(self, member: Member, frame: dict[str, Any]) -> None:
        frame_id = str(frame.get("id", ""))
        if frame_id.startswith("m") and frame_id[1:].isdigit():
            # A publish the gateway refused (not stored): it is not expected
            # anywhere, and a phase does not wait for it.
            index = int(frame_id[1:])
            self.refused.add(index)
            if index >= self.first:
                self.expected -= 1
                self._complete(index, time.perf_counter(), refused=True)
        else:
            self.errors += 1
        if len(self.refused) + self.errors <= WARNINGS:
            log.warn("Member {user} got {frame}", user=member.user, frame=frame)

    def _received(self, member: Member, frame: dict[str, Any]) -> None:
        now = time.perf_counter()
        body = frame["body"]
        index = body["m"]
        if member.seen[index]:
            member.duplicated += 1
            return
        member.seen[index] = 1
        key = stream_id_key(frame["id"])
        p, seq = body["p"], body["s"]
        if key <= member.last_id or seq <= member.last_seq[p]:
            member.reordered += 1
        member.last_id = max(member.last_id, key)
        member.last_seq[p] = max(member.last_seq[p], seq)
        first = self.history[index]
        if first is None:
            self.history[index] = frame["id"]
        elif first != frame["id"]:
            self.mismatched += 1

        self.delivered += 1
        self.last_delivered = now
        if index >= self.first:
            self.latencies.append(now - body["t"])
        left = self.remaining[index] - 1
        self.remaining[index] = left
        if left == 0:
            self._complete(index, now)

    def _complete(self, index: int, now: float, refused: bool = False) -> None:
        if index < self.first:
            return
        if not refused:
            self.completions.append(now - self.sent_at[index])
            self.completed += 1
        publisher = self.publishers[self.publisher_of[index]]
        if (
            self._rate <= 0
            and not self._closed
            and publisher.next_seq < publisher.quota
        ):
            self._publish(publisher)
        if self.completed >= self.expected and self.sent >= self.to_send:
            self._end_phase(None)

    def on_close(self, member: Member, code: int | None, reason: str | None) -> None:
        """A member's connection closed; unexpected unless the run is ending."""
        if not member.closing:
            member.dropped = True
            self.disconnects += 1
        if self.disconnects <= WARNINGS and not member.closing:
            log.warn(
                "Member {user} disconnected: {code} {reason}",
                user=member.user,
                code=code,
                reason=reason,
            )
        closed = member.waiting.pop("closed", None)
        if closed is not None and not closed.called:
            closed.callback({"code": code})
        for d in member.waiting.values():
            if not d.called:
                d.errback(ConnectionError(f"{member.user} closed: {code} {reason}"))
        member.waiting.clear()

    def _check_stall(self) -> None:
        quiet = time.perf_counter() - max(self.last_delivered, self.last_sent)
        if self.sent >= self.to_send and quiet > STALL:
            self._end_phase(RuntimeError(f"no delivery for {STALL:g} s"))

    def _end_phase(self, error: Exception | None) -> None:
        for loop in (self._pacer, self._watch):
            if loop is not None and loop.running:
                loop.stop()
        self._pacer = self._watch = None
        done, self._done = self._done, None
        if done is None or done.called:
            # Cancelled by the deadline: the figures end here too.
            if self._cpu_end is None:
                self._cpu_end = self._cpu_now()
            return
        self._cpu_end = self._cpu_now()
        if error is None:
            done.callback(None)
        else:
            done.errback(error)

    def _cpu_now(self) -> dict[str, float]:
        now = {name: cpu_seconds(pid) for name, pid in self._pids.items()}
        return now | {WALL: time.perf_counter()}

    # Results

    def report(self) -> dict[str, Any]:
        """The figures of the last phase, and the loss checks over all phases."""
        elapsed = max(self.last_delivered - self.started, 1e-9)
        cpu_end = self._cpu_end or self._cpu_now()
        history = self.history
        sent = len(self.sent_at)
        stored = sent - len(self.refused)
        connected = [m for m in self.members if not m.dropped]
        return {
            "delivered": self.delivered,
            "elapsed_s": round(elapsed, 3),
            "deliveries_per_s": round(self.delivered / elapsed),
            "msgs_per_s": round(self.completed / elapsed, 1),
            "sent_per_s": round(self.sent / max(self.last_sent - self.started, 1e-9)),
            "latency_ms": summary(self.latencies),
            "completion_ms": summary(self.completions),
            "ack_ms": summary(self.ack_latencies),
            "lost": sum(
                n for i, n in enumerate(self.remaining) if i not in self.refused
            ),
            "lost_connected": sum(stored - m.seen.count(1, 0, sent) for m in connected),
            "unsent": sum(p.quota - p.next_seq for p in self.publishers),
            "duplicated": sum(m.duplicated for m in self.members),
            "out_of_order": sum(m.reordered for m in self.members),
            "mismatched": self.mismatched
            + sum(1 for i, h in self.acked.items() if history[i] not in (None, h)),
            "refused": len(self.refused),
            "unanswered": stored - len(self.acked),
            "errors": self.errors,
            "disconnects": self.disconnects,
            "cpu_pct": cpu_shares(self._cpu_start, cpu_end) if self._cpu_start else {},
        }

    # Leaving

    @defer.inlineCallbacks
    def leave(self) -> Any:
        """Unsubscribe every member (the group's membership ends), then close.

        Best effort and bounded: what is left expires from Redis by itself.
        """
        self._closed = True
        self._end_phase(RuntimeError("stopped"))
        waits = []
        for member in self.members:
            if _is_open(member):
                left = member.expect("unsubscribed")
                member.send({"type": "unsubscribe", "id": "u", "group": self.group})
                waits.append(left.addTimeout(LEAVE_TIMEOUT, self._reactor))
        yield defer.DeferredList(waits, consumeErrors=True)
        closes = []
        for member in self.members:
            member.closing = True
            if _is_open(member):
                assert member.protocol is not None
                closes.append(member.expect("closed"))
                member.protocol.sendClose(1000)
        yield defer.DeferredList(closes, consumeErrors=True)


def _is_open(member: Member) -> bool:
    protocol = member.protocol
    return protocol is not None and protocol.state == protocol.STATE_OPEN


def cpu_shares(start: dict[str, float], end: dict[str, float]) -> dict[str, float]:
    """CPU used per process between two readings, in % of one core.

    ``others`` is the machine's use not accounted for by the processes named:
    the other work sharing the machine during the run.
    """
    wall = max(end[WALL] - start[WALL], 1e-9)
    shares = {n: 100 * (end[n] - start[n]) / wall for n in start if n != WALL}
    named = sum(v for k, v in shares.items() if k not in ("machine", "steal"))
    shares["others"] = max(0.0, shares["machine"] - named)
    return {name: round(value, 1) for name, value in shares.items()}
