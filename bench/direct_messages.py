"""Benchmark: direct messages between many clients across two real gateway nodes.

It starts two ``twistd -n wsha`` nodes on 127.0.0.1 and connects ``--pairs``
sender/receiver pairs. Senders of even pairs sit on node 1 and write to
receivers on node 2, odd pairs the other way, so every message crosses nodes
(inbox append in Redis, notice over Kafka, inbox pull on the other node). All
clients run in this process on one reactor: a latency is one clock read at
``send()``, carried in the body, against another in the receiver's callback.

It prints delivered messages per second, end-to-end latency percentiles, the
time from ``send()`` to the gateway's ack, the CPU each process used, and the
messages lost, duplicated or reordered. It exits 1 if any were, if a send
failed, or if the run overran ``--deadline``; it always stops the nodes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python.failure import Failure

from wsha.auth import mint_token
from wsha.client import GatewayClient
from wsha.localcluster import LocalNode

NODE_ARGS = ["--inbox-ttl=900", "--dedupe-ttl=900", "--session-ttl=900"]
"""The benchmark's inboxes and sessions expire from Redis 15 minutes after use."""

TICK = 0.005
"""Seconds between two rounds of paced sends (``--rate``)."""

STOP_RESERVE = 25.0
"""Seconds of ``--deadline`` kept for stopping the nodes."""

MACHINE, STEAL = -1, -2
"""Pseudo process ids: the whole machine's CPU use, and its steal time."""

CHECKS = ("lost", "unsent", "duplicated", "out_of_order", "errors")
"""Counts that must all be 0 for a run to pass."""

log = Logger()


def cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) used so far by process ``pid``, or by this one.

    ``MACHINE`` stands for all processes: the busy time of every core together;
    ``STEAL`` for the time the hypervisor gave those cores to other machines.
    """
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    try:
        if pid in (MACHINE, STEAL):
            ticks = [int(n) for n in Path("/proc/stat").read_text().split()[1:9]]
            used = ticks[7] if pid == STEAL else sum(ticks[:3]) + ticks[5] + ticks[6]
            return used / os.sysconf("SC_CLK_TCK")
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def summary(seconds: list[float]) -> dict[str, float]:
    """p50, p90, p99 (nearest rank) and max of ``seconds``, in milliseconds."""
    ordered = sorted(seconds) or [math.nan]

    def rank(q: float) -> float:
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000, 1)

    return {"p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99), "max": rank(1.0)}


@dataclass
class Pair:
    """One sender, its receiver on the other node, and what went between them."""

    sender: GatewayClient
    receiver: GatewayClient
    to: str
    quota: int = 0
    next_seq: int = 0
    top_seq: int = -1
    seen: set[int] = field(default_factory=set)
    duplicated: int = 0
    reordered: int = 0


class DirectMessageBench:
    """Drives the pairs on the reactor and collects one phase's figures.

    :param reactor: the reactor the clients run on.
    :param urls: the two nodes' WebSocket URLs.
    :param secret: the nodes' JWT secret.
    :param pairs: how many sender/receiver pairs.
    :param window: the most unacknowledged sends per sender when not paced.
    :param pids: processes whose CPU use is measured by name (None: this one).
    """

    def __init__(
        self,
        reactor: Any,
        urls: list[str],
        secret: str,
        pairs: int,
        window: int,
        pids: dict[str, int | None],
    ):
        self._reactor = reactor
        self._window = window
        self._pids = pids
        run = secrets.token_hex(3)
        self.pairs = [
            self._pair(f"bench-{run}-{i}", urls[i % 2], urls[1 - i % 2], secret, i)
            for i in range(pairs)
        ]
        self.latencies: list[float] = []
        self.ack_latencies: list[float] = []
        self.errors = self.sent = self.delivered = self._expected = 0
        self.started = self.last_sent = self.last_delivered = time.perf_counter()
        self._cpu_start: dict[str, float] = {}
        self._cpu_end: dict[str, float] | None = None
        self._done: defer.Deferred[None] | None = None
        self._pacer: task.LoopingCall | None = None
        self._closed = False

    def _pair(self, user: str, out_url: str, in_url: str, secret: str, i: int) -> Pair:
        def received(frame: dict[str, Any]) -> None:
            self._received(self.pairs[i], frame)

        to = user + "-in"
        receiver = GatewayClient(
            self._reactor, in_url, mint_token(secret, to), "in", received
        )
        sender = GatewayClient(
            self._reactor, out_url, mint_token(secret, user), "out", lambda _: None
        )
        return Pair(sender, receiver, to)

    def connect(self) -> defer.Deferred[Any]:
        """Start every client; fire once each one has been welcomed."""
        welcomes = []
        for pair in self.pairs:
            for client in (pair.receiver, pair.sender):
                client.start()
                welcomes.append(client.when_connected())
        return defer.gatherResults(welcomes)

    def run(self, count: int, rate: float) -> defer.Deferred[None]:
        """Send ``count`` messages per sender; fire once all of them are delivered.

        Unpaced (``rate`` 0) each sender keeps ``window`` sends unacknowledged;
        paced, sends go out round-robin over the pairs at ``rate`` per second.
        """
        self.latencies, self.ack_latencies = [], []
        self.errors = self.sent = self.delivered = 0
        self._expected = count * len(self.pairs)
        self._cpu_start, self._cpu_end = self._cpu_now(), None
        self.started = self.last_delivered = time.perf_counter()
        self._done = defer.Deferred()
        for pair in self.pairs:
            pair.quota += count
        if rate > 0:
            self._pacer = task.LoopingCall(self._paced, rate)
            self._pacer.clock = self._reactor
            self._pacer.start(TICK)
        else:
            for pair in self.pairs:
                for _ in range(min(self._window, count)):
                    self._send(pair, refill=True)
        return self._done

    def _paced(self, rate: float) -> None:
        due = min(self._expected, int((time.perf_counter() - self.started) * rate))
        while self.sent < due:
            self._send(self.pairs[self.sent % len(self.pairs)], refill=False)
        if self.sent >= self._expected and self._pacer is not None:
            self._pacer.stop()
            self._pacer = None

    def _send(self, pair: Pair, refill: bool) -> None:
        seq, pair.next_seq = pair.next_seq, pair.next_seq + 1
        self.sent += 1
        sent_at = self.last_sent = time.perf_counter()
        d = pair.sender.send(pair.to, {"seq": seq, "t": sent_at}, client_id=f"m{seq}")
        d.addBoth(self._answered, pair, seq, sent_at, refill)

    def _answered(
        self, ack: Any, pair: Pair, seq: int, sent_at: float, refill: bool
    ) -> None:
        if isinstance(ack, Failure):
            self.errors += 1
            log.warn("Send {seq} to {to} failed: {e}", seq=seq, to=pair.to, e=ack.value)
        else:
            self.ack_latencies.append(time.perf_counter() - sent_at)
        if refill and not self._closed and pair.next_seq < pair.quota:
            self._send(pair, refill)

    def _received(self, pair: Pair, frame: dict[str, Any]) -> None:
        now = time.perf_counter()
        seq = frame["body"]["seq"]
        if seq in pair.seen:
            pair.duplicated += 1
            return
        if seq < pair.top_seq:
            pair.reordered += 1
        pair.seen.add(seq)
        pair.top_seq = max(pair.top_seq, seq)
        self.latencies.append(now - frame["body"]["t"])
        self.delivered += 1
        self.last_delivered = now
        if self.delivered >= self._expected and self._done is not None:
            self._cpu_end = self._cpu_now()
            done, self._done = self._done, None
            done.callback(None)

    def _cpu_now(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self._pids.items()}

    def report(self) -> dict[str, Any]:
        """The figures of the last phase, and the loss checks over all phases."""
        elapsed = max(self.last_delivered - self.started, 1e-9)
        clients = [c for p in self.pairs for c in (p.sender, p.receiver)]
        cpu_end = self._cpu_end or self._cpu_now()
        dropped = sum(p.receiver.stats.duplicates_dropped for p in self.pairs)
        return {
            "delivered": self.delivered,
            "elapsed_s": round(elapsed, 3),
            "msgs_per_s": round(self.delivered / elapsed, 1),
            "sent_per_s": round(self.sent / max(self.last_sent - self.started, 1e-9)),
            "latency_ms": summary(self.latencies),
            "ack_ms": summary(self.ack_latencies),
            "lost": sum(p.next_seq - len(p.seen) for p in self.pairs),
            "unsent": sum(p.quota - p.next_seq for p in self.pairs),
            "duplicated": sum(p.duplicated for p in self.pairs) + dropped,
            "out_of_order": sum(p.reordered for p in self.pairs),
            "errors": self.errors,
            "reconnects": sum(c.stats.connects for c in clients) - len(clients),
            "cpu_pct": {
                name: round(100 * (cpu_end[name] - start) / elapsed, 1)
                for name, start in self._cpu_start.items()
            },
        }

    def close(self) -> None:
        """Stop sending and close every client."""
        self._closed = True
        if self._pacer is not None:
            self._pacer.stop()
        for pair in self.pairs:
            pair.sender.stop()
            pair.receiver.stop()


@defer.inlineCallbacks
def run_bench(reactor: Any, bench: DirectMessageBench, args: Any) -> Any:
    """Connect, warm up (not measured), run the measured phase, wait for stragglers."""
    yield bench.connect()
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
        "throughput": f"{r['msgs_per_s']} msg/s (sent {r['sent_per_s']}/s)",
        "latency ms": "  ".join(f"{k} {v}" for k, v in r["latency_ms"].items()),
        "ack ms": f"p50 {r['ack_ms']['p50']}  p99 {r['ack_ms']['p99']}",
        "checks": "  ".join(f"{k} {r[k]}" for k in (*CHECKS, "reconnects")),
        "cpu % of a core": "  ".join(f"{k} {v}" for k, v in r["cpu_pct"].items()),
    }
    print(f"pairs {args.pairs}, {args.messages} msgs/sender, rate {pace}")
    for name, value in rows.items():
        print(f"  {name:16} {value}")


def _react(reactor: Any, nodes: list[LocalNode], secret: str, args: Any) -> Any:
    pids: dict[str, int | None] = {"bench": None}
    pids |= {n.node_id: n.process.pid for n in nodes if n.process is not None}
    pids |= args.cpu_of
    pids |= {"machine": MACHINE, "steal": STEAL}
    bench = DirectMessageBench(
        reactor, [n.ws_url for n in nodes], secret, args.pairs, args.window, pids
    )
    d = run_bench(reactor, bench, args)
    d.addTimeout(max(1.0, args.stop_at - time.monotonic()), reactor)

    def finish(outcome: Any) -> Any:
        failed = isinstance(outcome, Failure)
        timed_out = failed and outcome.check(defer.TimeoutError) is not None
        if failed and not timed_out:
            outcome.printTraceback()
        report = {"timed_out": timed_out, **bench.report()}
        print_report(args, report)
        if args.json:
            settings = {k: vars(args)[k] for k in ("pairs", "messages", "rate")}
            when = datetime.now(UTC).isoformat(timespec="seconds")
            line = {"date": when, **settings, "window": args.window, **report}
            with open(args.json, "a", encoding="utf-8") as out:
                out.write(json.dumps(line) + "\n")
        ok = not failed and not any(report[k] for k in CHECKS)
        why = " (deadline: sends in flight count as lost)" if timed_out else ""
        print("RESULT:", "PASS" if ok else "FAIL" + why)
        bench.close()
        # The clients' closing handshakes get half a second.
        pause = task.deferLater(reactor, 0.5, lambda: None)
        return pause.addCallback(lambda _: sys.exit(0 if ok else 1))

    return d.addBoth(finish)


def add_run_options(parser: argparse.ArgumentParser, deadline: float) -> None:
    """The options every benchmark takes: where Redis and Kafka are, where node
    logs go, the hard deadline, the JSON results file and other processes'
    CPU to report."""
    add = parser.add_argument
    add("--redis", default="redis://127.0.0.1:6379/0", help="Redis URL")
    add("--kafka", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    add("--run-dir", default=".run/bench", help="where node logs go (.run/bench)")
    add(
        "--deadline", type=float, default=deadline, help=f"hard limit, s ({deadline:g})"
    )
    add("--json", metavar="PATH", help="append the results as a JSON line to PATH")
    add(
        "--cpu-of",
        action="append",
        default=[],
        metavar="NAME=PID",
        help="also report the CPU use of this process, e.g. redis=1234 (repeatable)",
    )


def parse_run_options(parser: argparse.ArgumentParser, argv: list[str] | None) -> Any:
    """Parse the command line; ``--cpu-of`` becomes a name-to-pid mapping."""
    args = parser.parse_args(argv)
    try:
        args.cpu_of = {k: int(v) for k, _, v in (s.partition("=") for s in args.cpu_of)}
    except ValueError:
        parser.error("--cpu-of takes NAME=PID")
    return args


def parse_args(argv: list[str] | None) -> Any:
    """Parse and check the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--pairs", type=int, default=200, help="sender/receiver pairs (200)")
    add("--messages", type=int, default=100, help="measured sends per sender (100)")
    add("--rate", type=float, default=0, help="sends/s in all; 0: unlimited (0)")
    add("--window", type=int, default=1, help="unacked sends/sender if unlimited (1)")
    add("--warmup", type=int, default=2, help="unmeasured sends per sender first (2)")
    add_run_options(parser, 300)
    args = parse_run_options(parser, argv)
    if min(args.pairs, args.messages, args.window) < 1 or args.warmup < 0:
        parser.error("--pairs, --messages and --window must be positive")
    if args.deadline <= STOP_RESERVE + 10:
        parser.error(f"--deadline must be over {STOP_RESERVE + 10:g} s")
    return args


def main(argv: list[str] | None = None) -> int:
    """Start two nodes, run the benchmark on them, stop them; 0 only on a clean run."""
    args = parse_args(argv)
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
        for i in (1, 2)
    ]

    def overrun(signum: int, frame: Any) -> None:
        # Only if the reactor is stuck: its own timeout should have ended the run.
        print("deadline overrun: stopping the nodes", file=sys.stderr)
        for node in nodes:
            node.stop(timeout=5)
        os._exit(3)

    signal.signal(signal.SIGALRM, overrun)
    signal.alarm(math.ceil(args.deadline - STOP_RESERVE + 10))
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready(timeout=max(1.0, args.stop_at - time.monotonic()))
        task.react(lambda reactor: _react(reactor, nodes, secret, args))
    finally:
        signal.alarm(0)
        for node in nodes:
            node.stop(timeout=10)
    return 1


if __name__ == "__main__":
    sys.exit(main())
