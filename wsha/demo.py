"""The two-node demo: numbered messages across nodes while users switch networks.

User A on node 1 sends numbered messages to user B on node 2; half-way, B's
network "changes": its TCP connection goes silent without a close, and it
reconnects to node 1 from another source address (127.0.0.2). Then B sends
as many back while A does the same towards node 2. Last, A and B join a group
in which user C publishes as many messages, and B switches network again
half-way: its subscription follows it to the other node without a new
subscribe. The demo prints what was sent, delivered, lost, duplicated and out
of order, and the time from each reconnect to the first replayed message; it
exits 1 if anything was lost, duplicated or reordered.

Run it with ``scripts/demo`` (which starts Redis and Kafka), or directly:
``python -m wsha.demo --redis redis://127.0.0.1:6379/0 --kafka 127.0.0.1:9092``.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from wsha.auth import mint_token
from wsha.client import GatewayClient
from wsha.localcluster import LocalNode

# The address a device "on its new network" connects from (loopback alias).
NEW_SOURCE = "127.0.0.2"


@dataclass
class Receipts:
    """What one recipient got, checked against what was sent."""

    seqs: list[int] = field(default_factory=list)
    switch_started: float | None = None
    welcomed_again: float | None = None
    first_after_switch: float | None = None
    replayed: int = 0

    def record(self, message: dict[str, Any]) -> None:
        """Note one delivered message."""
        if self.welcomed_again is not None and self.first_after_switch is None:
            self.first_after_switch = time.monotonic()
        self.seqs.append(int(message["body"]["seq"]))

    def report(self, sent: int, dropped: int) -> dict[str, Any]:
        """Count delivered, lost, duplicated and out-of-order messages.

        :param dropped: repeats the client itself dropped (resumed messages it
            had already handled), counted as duplicates the gateway sent.
        """
        unique = set(self.seqs)
        reordered = sum(
            1 for a, b in zip(self.seqs, self.seqs[1:], strict=False) if b < a
        )
        replay_ms = None
        if self.first_after_switch is not None and self.welcomed_again is not None:
            replay_ms = (self.first_after_switch - self.welcomed_again) * 1000
        reconnect_ms = None
        if self.welcomed_again is not None and self.switch_started is not None:
            reconnect_ms = (self.welcomed_again - self.switch_started) * 1000
        return {
            "sent": sent,
            "delivered": len(unique),
            "lost": len(set(range(sent)) - unique),
            "duplicated": len(self.seqs) - len(unique) + dropped,
            "out_of_order": reordered,
            "replayed_on_reconnect": self.replayed,
            "reconnect_ms": reconnect_ms,
            # The first message after the reconnect: a replayed one when any
            # was missed (replayed_on_reconnect > 0), else the next live one.
            "reconnect_to_first_message_ms": replay_ms,
        }


def wait_until(reactor: Any, condition: Any, timeout: float) -> defer.Deferred[bool]:
    """Fire True once ``condition()`` holds, or False after ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout

    @defer.inlineCallbacks
    def poll() -> Any:
        while not condition():
            if reactor.seconds() > deadline:
                return False
            yield task.deferLater(reactor, 0.01, lambda: None)
        return True

    return poll()


@defer.inlineCallbacks
def drive(
    reactor: Any,
    send_one: Callable[[int, str], defer.Deferred[Any]],
    recipient: GatewayClient,
    receipts: Receipts,
    new_url: str,
    count: int,
    rate: float,
) -> Any:
    """Send ``count`` numbered messages; the recipient switches network half-way.

    :param send_one: sends message ``seq`` under client id ``<run>-<seq>``.
    """
    run = secrets.token_hex(4)
    acks = []
    for seq in range(count):
        if seq == count // 2:
            receipts.switch_started = time.monotonic()
            recipient.url = new_url
            recipient.switch_network(NEW_SOURCE)
        acks.append(send_one(seq, f"{run}-{seq}"))
        if seq % 10 == 9:
            yield task.deferLater(reactor, 10 / rate, lambda: None)
    acked = yield wait_until(reactor, lambda: all(d.called for d in acks), 60)
    if not acked:
        unanswered = sum(1 for d in acks if not d.called)
        print(f"\n{unanswered} of {count} sends still unacknowledged after 60 s")
    yield wait_until(reactor, lambda: len(set(receipts.seqs)) >= count, 30)
    # Give a duplicate, if the gateway were to send one, the time to show up.
    yield wait_until(reactor, lambda: False, 0.5)


def print_report(title: str, report: dict[str, Any]) -> None:
    """Print one direction's figures."""
    print(f"\n{title}")
    for key, value in report.items():
        shown = f"{value:.1f}" if isinstance(value, float) else value
        print(f"  {key:34} {shown}")


@defer.inlineCallbacks
def run_demo(
    reactor: Any, nodes: list[LocalNode], secret: str, count: int, rate: float
) -> Any:
    """Run both directions; fire True if nothing was lost, duplicated or reordered."""
    suffix = secrets.token_hex(3)
    user_a, user_b = f"alice-{suffix}", f"bob-{suffix}"
    node1, node2 = nodes
    got_a, got_b = Receipts(), Receipts()

    a = GatewayClient(
        reactor,
        node1.ws_url,
        lambda: mint_token(secret, user_a),
        "laptop",
        got_a.record,
    )
    b = GatewayClient(
        reactor, node2.ws_url, lambda: mint_token(secret, user_b), "phone", got_b.record
    )

    def welcomed(receipts: Receipts) -> Any:
        def on_welcome(frame: dict[str, Any]) -> None:
            if receipts.switch_started is not None:
                receipts.welcomed_again = time.monotonic()
                receipts.replayed = int(frame["replayed"])

        return on_welcome

    a.on_welcome, b.on_welcome = welcomed(got_a), welcomed(got_b)
    a.start()
    b.start()
    yield defer.gatherResults([a.when_connected(), b.when_connected()])
    print(f"{user_a} on {node1.node_id}, {user_b} on {node2.node_id}")

    yield drive(
        reactor,
        lambda seq, cid: a.send(user_b, {"seq": seq}, client_id=cid),
        b,
        got_b,
        node1.ws_url,
        count,
        rate,
    )
    report_b = got_b.report(count, b.stats.duplicates_dropped)
    print_report(
        f"{user_a} -> {user_b} ({user_b} dropped its link to {node2.node_id} and "
        f"came back on {node1.node_id} from {NEW_SOURCE})",
        report_b,
    )

    yield drive(
        reactor,
        lambda seq, cid: b.send(user_a, {"seq": seq}, client_id=cid),
        a,
        got_a,
        node2.ws_url,
        count,
        rate,
    )
    report_a = got_a.report(count, a.stats.duplicates_dropped)
    print_report(
        f"{user_b} -> {user_a} ({user_a} dropped its link to {node1.node_id} and "
        f"came back on {node2.node_id} from {NEW_SOURCE})",
        report_a,
    )

    room = f"room-{suffix}"
    c = GatewayClient(
        reactor,
        node1.ws_url,
        lambda: mint_token(secret, user_c(suffix)),
        "desk",
        lambda frame: None,
    )
    c.start()
    yield c.when_connected()
    in_room_a, in_room_b = Receipts(), Receipts()
    a.groups.on_group_message = in_room_a.record
    b.groups.on_group_message = in_room_b.record
    b.on_welcome = welcomed(in_room_b)
    yield defer.gatherResults([x.subscribe(room) for x in (a, b, c)])
    yield drive(
        reactor,
        lambda seq, cid: c.publish(room, {"seq": seq}, client_id=cid),
        b,
        in_room_b,
        node2.ws_url,
        count,
        rate,
    )
    yield wait_until(reactor, lambda: len(set(in_room_a.seqs)) >= count, 30)
    reports = [report_a, report_b]
    for user, receipts, client, where in (
        (user_b, in_room_b, b, f"switched from {node1.node_id} to {node2.node_id}"),
        (user_a, in_room_a, a, f"stayed on {node2.node_id}"),
    ):
        reports.append(receipts.report(count, client.groups.duplicates_dropped))
        print_report(f"group {room}: {user_c(suffix)} -> {user} ({where})", reports[-1])

    for client in (a, b, c):
        client.stop()
    yield task.deferLater(reactor, 0.2, lambda: None)
    return all(
        r["lost"] == 0 and r["duplicated"] == 0 and r["out_of_order"] == 0
        for r in reports
    )


def user_c(suffix: str) -> str:
    """The group's publisher."""
    return f"carol-{suffix}"


def main(argv: list[str] | None = None) -> int:
    """Start two nodes, run the demo on them, stop them; exit 0 only on a clean run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument(
        "--rate", type=float, default=2000.0, help="messages per second"
    )
    parser.add_argument("--run-dir", default=".run/demo")
    args = parser.parse_args(argv)

    secret = secrets.token_urlsafe(32)
    nodes = [
        LocalNode(f"demo-node-{i}", args.redis, args.kafka, secret, Path(args.run_dir))
        for i in (1, 2)
    ]
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready()
        # react() runs the reactor, then exits the process with the verdict;
        # a reactor stopped early (Ctrl-C) would exit 0 without one.
        finished: list[bool] = []
        try:
            task.react(lambda reactor: _react(reactor, nodes, secret, args, finished))
        except SystemExit as done:
            if not finished:
                print("\nRESULT: INTERRUPTED")
                return 2
            raise done
    finally:
        for node in nodes:
            node.stop()
    return 1


def _react(
    reactor: Any, nodes: list[LocalNode], secret: str, args: Any, finished: list[bool]
) -> Any:
    d = run_demo(reactor, nodes, secret, args.messages, args.rate)

    def verdict(ok: bool) -> None:
        finished.append(True)
        print(
            "\nRESULT:", "PASS (0 lost, 0 duplicated, 0 out of order)" if ok else "FAIL"
        )
        if not ok:
            raise SystemExit(1)

    return d.addCallback(verdict)


if __name__ == "__main__":
    sys.exit(main())
