"""Benchmark: fan-out of group messages to many members spread over real nodes.

It starts ``--nodes`` ``twistd -n wsha`` nodes on 127.0.0.1 and connects
``--members`` raw WebSocket clients, member ``i`` on node ``i % nodes``, each
one subscribed to the same group. The first ``--publishers`` members publish
numbered messages to it; every member, the publishers included, receives each
one (client → node → Redis history + Pub/Sub → every node with members →
every member). All clients run in this process on one reactor: a latency is a
clock read at the publish, carried in the body, against another when a member
gets the message.

It prints the deliveries per second, the latency of every delivery, the time
until the last member had each message ("completion"), the publish acks, the
CPU each process used, and the deliveries lost, duplicated, reordered or
carrying another history id than the first member saw. It exits 1 if any
were, if a publish or a connection failed, or if the run overran
``--deadline``; it always stops the nodes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from direct_messages import MACHINE, STEAL, add_run_options, parse_run_options
from group_members import LEAVE_TIMEOUT, GroupFanoutBench
from twisted.internet import defer, task
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python.failure import Failure

from wsha.localcluster import LocalNode

NODE_ARGS = [
    "--inbox-ttl=900",
    "--dedupe-ttl=900",
    "--session-ttl=900",
    "--group-history-ttl=900",
    # Members connect faster than the default admission rate lets in.
    "--accept-rate=0",
]
"""The benchmark's history and sessions expire from Redis 15 minutes after use."""

STOP_RESERVE = 40.0
"""Seconds of ``--deadline`` kept for the members to leave and the nodes to stop."""

CHECKS = (
    "lost",
    "unsent",
    "duplicated",
    "out_of_order",
    "mismatched",
    "refused",
    "unanswered",
    "errors",
    "disconnects",
)
"""Counts that must all be 0 for a run to pass."""


@defer.inlineCallbacks
def run_bench(reactor: Any, bench: GroupFanoutBench, args: Any) -> Any:
    """Connect, warm up (not measured), run the measured phase, wait for stragglers."""
    started = time.perf_counter()
    yield bench.connect(args.connect_concurrency)
    args.connect_s = round(time.perf_counter() - started, 1)
    if args.warmup:
        yield bench.run(args.warmup, args.rate)
    yield bench.run(args.messages, args.rate)
    # A duplicate, if the gateway sent one, gets this long to show up.
    yield task.deferLater(reactor, 0.5, lambda: None)


def print_report(args: Any, r: dict[str, Any]) -> None:
    """Print the short table of one run."""
    pace = f"{args.rate:g}/s" if args.rate > 0 else f"unlimited, window {args.window}"
    rows = {
        "delivered": f"{r['delivered']} in {r['elapsed_s']} s",
        "throughput": f"{r['deliveries_per_s']} deliveries/s, {r['msgs_per_s']} msg/s"
        f" (sent {r['sent_per_s']}/s)",
        "latency ms": "  ".join(f"{k} {v}" for k, v in r["latency_ms"].items()),
        "completion ms": "  ".join(f"{k} {v}" for k, v in r["completion_ms"].items()),
        "ack ms": f"p50 {r['ack_ms']['p50']}  p99 {r['ack_ms']['p99']}",
        "checks": "  ".join(f"{k} {r[k]}" for k in CHECKS),
        "lost while open": f"{r['lost_connected']} (to members never disconnected)",
        "cpu % of a core": "  ".join(f"{k} {v}" for k, v in r["cpu_pct"].items()),
    }
    print(
        f"{args.members} members on {args.nodes} nodes (connected in "
        f"{r['connect_s']} s), {args.publishers} publisher(s), "
        f"{args.messages} msgs each, rate {pace}"
    )
    for name, value in rows.items():
        print(f"  {name:16} {value}")


def _react(reactor: Any, nodes: list[LocalNode], secret: str, args: Any) -> Any:
    pids: dict[str, int | None] = {"bench": None}
    pids |= {n.node_id: n.process.pid for n in nodes if n.process is not None}
    pids |= args.cpu_of
    pids |= {"machine": MACHINE, "steal": STEAL}
    bench = GroupFanoutBench(
        reactor,
        [n.ws_url for n in nodes],
        secret,
        args.members,
        args.publishers,
        args.publishers * (args.warmup + args.messages),
        args.window,
        pids,
    )
    args.connect_s = None
    d = run_bench(reactor, bench, args)
    d.addTimeout(max(1.0, args.stop_at - time.monotonic()), reactor)

    def finish(outcome: Any) -> Any:
        failed = isinstance(outcome, Failure)
        timed_out = failed and outcome.check(defer.TimeoutError) is not None
        if failed and not timed_out:
            outcome.printTraceback()
        report = {"timed_out": timed_out, "connect_s": args.connect_s, **bench.report()}
        print_report(args, report)
        if args.json:
            names = ("nodes", "members", "publishers", "messages", "rate", "window")
            when = datetime.now(UTC).isoformat(timespec="seconds")
            line = {"bench": "group_fanout", "date": when, "code": args.code}
            line |= {k: vars(args)[k] for k in names} | report
            with open(args.json, "a", encoding="utf-8") as out:
                out.write(json.dumps(line) + "\n")
        ok = not failed and not any(report[k] for k in CHECKS)
        why = " (deadline: messages in flight count as lost)" if timed_out else ""
        print("RESULT:", "PASS" if ok else "FAIL" + why)
        left = bench.leave()
        left.addTimeout(2 * LEAVE_TIMEOUT + 1, reactor)
        return left.addBoth(lambda _: sys.exit(0 if ok else 1))

    return d.addBoth(finish)


def parse_args(argv: list[str] | None) -> Any:
    """Parse and check the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--nodes", type=int, default=3, help="gateway nodes (3)")
    add("--members", type=int, default=1000, help="members of the group (1000)")
    add("--publishers", type=int, default=1, help="members that publish (1)")
    add("--messages", type=int, default=200, help="measured msgs per publisher (200)")
    add("--rate", type=float, default=20, help="msgs/s in all; 0: unlimited (20)")
    add("--window", type=int, default=1, help="incomplete msgs/publisher if 0 (1)")
    add("--warmup", type=int, default=2, help="unmeasured msgs per publisher (2)")
    add("--connect-concurrency", type=int, default=50, help="joins at once (50)")
    add_run_options(parser, 150)
    args = parse_run_options(parser, argv)
    counts = (args.nodes, args.members, args.publishers, args.messages, args.window)
    if min(*counts, args.connect_concurrency) < 1 or args.warmup < 0:
        parser.error("counts must be positive")
    if args.publishers > args.members:
        parser.error("--publishers must not exceed --members (publishers are members)")
    if args.deadline <= STOP_RESERVE + 10:
        parser.error(f"--deadline must be over {STOP_RESERVE + 10:g} s")
    return args


def main(argv: list[str] | None = None) -> int:
    """Start the nodes, run the benchmark on them, stop them; 0 only on a clean run."""
    args = parse_args(argv)
    args.code = code_version()
    args.stop_at = time.monotonic() + args.deadline - STOP_RESERVE
    warnings = LogLevelFilterPredicate(LogLevel.warn)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [warnings])],
        redirectStandardIO=False,
    )
    secret = secrets.token_urlsafe(32)
    services, run_dir = (args.redis, args.kafka, secret), Path(args.run_dir)
    nodes = [
        LocalNode(f"bench-node-{i}", *services, run_dir, extra_args=NODE_ARGS)
        for i in range(1, args.nodes + 1)
    ]

    def overrun(signum: int, frame: Any) -> None:
        # Only if the reactor is stuck: its own timeout should have ended the run.
        print("deadline overrun: stopping the nodes", file=sys.stderr)
        stop_all(nodes, timeout=5)
        os._exit(3)

    signal.signal(signal.SIGALRM, overrun)
    signal.alarm(math.ceil(args.deadline - STOP_RESERVE + 2 * LEAVE_TIMEOUT + 5))
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready(timeout=max(1.0, args.stop_at - time.monotonic()))
        task.react(lambda reactor: _react(reactor, nodes, secret, args))
    finally:
        signal.alarm(0)
        stop_all(nodes, timeout=10)
    return 1


def stop_all(nodes: list[LocalNode], timeout: float) -> None:
    """Stop every node at once; return when all have exited."""
    with ThreadPoolExecutor(len(nodes)) as pool:
        list(pool.map(lambda node: node.stop(timeout=timeout), nodes))


def code_version() -> str:
    """The commit measured, with ``-dirty`` if code differs from it; '' outside git.

    Only Python files count: results and notes change nothing measured.
    """
    here = Path(__file__).parent

    def git(*argv: str) -> str:
        done = subprocess.run(
            ["git", *argv], check=False, cwd=here, capture_output=True, text=True
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--", ":/*.py")
    except OSError:
        return ""
    return commit + ("-dirty" if changed else "")


if __name__ == "__main__":
    sys.exit(main())
