"""Benchmark: a reconnect storm against one node, with and without admission control.

It starts one ``twistd -n wsha`` node on 127.0.0.1 with the given
``--accept-rate``/``--accept-burst`` (0 disables the limit) and connects a probe
client that sends an application ``ping`` every 50 ms. A second process (this
script with ``--worker``) then opens ``--clients`` connections at once, each a
:class:`wsha.client.GatewayClient` of its own user that backs off and retries
when turned away with 1013; the probe stays in this lightly loaded process so
its round trips show the node's delay, not the storm client's.

It prints the time until every client had its ``welcome`` (p50/p99/max), how
many 1013 refusals they got, the node's CPU seconds during the storm, and the
probe's ping round trips: the cost the storm puts on connections that were
already open. It exits 1 if not every client got in before ``--deadline``; it
always stops the node.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.internet.utils import getProcessOutputAndValue

from wsha import wire
from wsha.auth import mint_token
from wsha.client import GatewayClient
from wsha.loadgen import percentile
from wsha.localcluster import LocalNode

PROBE_INTERVAL = 0.05
"""Seconds between two application pings of the probe client."""


class Probe:
    """An open connection that measures ping round trips while it runs.

    :param reactor: the reactor.
    :param client: a connected client whose link carries the pings.
    """

    def __init__(self, reactor: Any, client: GatewayClient):
        self.reactor = reactor
        self.client = client
        self.sent: dict[str, float] = {}
        self.rtts: list[float] = []
        self.loop = task.LoopingCall(self.ping)
        self.loop.clock = reactor

    def ping(self) -> None:
        """Send one ``ping`` frame with a fresh id."""
        link = self.client._link
        if link is None:
            return
        ping_id = secrets.token_hex(4)
        self.sent[ping_id] = time.perf_counter()
        link.sendMessage(f'{{"type":"ping","id":"{ping_id}"}}'.encode(), False)

    def pong(self, frame: dict[str, Any]) -> None:
        """Record the round trip of the ping ``frame`` answers."""
        started = self.sent.pop(str(frame.get("id")), None)
        if started is not None:
            self.rtts.append(time.perf_counter() - started)


def parse() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--accept-rate", type=float, default=200.0)
    parser.add_argument("--accept-burst", type=int, default=400)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--deadline", type=float, default=120.0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args()


def new_client(reactor: Any, url: str, secret: str, user: str) -> GatewayClient:
    """A started client of its own ``user``."""
    client = GatewayClient(
        reactor, url, lambda: mint_token(secret, user), "s", lambda m: None
    )
    client.start()
    return client


@defer.inlineCallbacks
def storm_worker(reactor: Any, options: argparse.Namespace) -> Any:
    """Open every storm client at once; fire with when each got in."""
    url, secret = str(options.worker).split(" ", 1)
    tag = secrets.token_hex(3)
    started = time.perf_counter()
    clients = [
        new_client(reactor, url, secret, f"storm-{tag}-{i}")
        for i in range(options.clients)
    ]
    welcomed: list[float] = []
    for client in clients:
        client.when_connected().addCallback(
            lambda _: welcomed.append(time.perf_counter() - started)
        )
    deadline = reactor.seconds() + options.deadline
    while len(welcomed) < len(clients) and reactor.seconds() < deadline:
        yield task.deferLater(reactor, 0.1, lambda: None)
    refusals = sum(c.stats.closes.get(wire.CLOSE_TRY_LATER, 0) for c in clients)
    for client in clients:
        client.stop()
    yield task.deferLater(reactor, 1.0, lambda: None)
    return {"welcomed": welcomed, "refusals": refusals}


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds process ``pid`` has used."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@defer.inlineCallbacks
def storm(reactor: Any, options: argparse.Namespace, node: LocalNode) -> Any:
    """Run the storm against ``node``; fire with the figures."""
    secret = node.jwt_secret
    probe_client = new_client(reactor, node.ws_url, secret, secrets.token_hex(6))
    yield probe_client.when_connected()
    probe = Probe(reactor, probe_client)
    frame = probe_client._frame

    def frame_with_pongs(link: Any, payload: dict[str, Any]) -> None:
        if payload.get("type") == "pong":
            probe.pong(payload)
        frame(link, payload)

    probe_client._frame = frame_with_pongs  # type: ignore[method-assign]
    probe.loop.start(PROBE_INTERVAL)
    yield task.deferLater(reactor, 1.0, lambda: None)
    quiet = list(probe.rtts)
    probe.rtts.clear()

    assert node.process is not None
    cpu_before = cpu_seconds(node.process.pid)
    args = [
        __file__,
        f"--clients={options.clients}",
        f"--deadline={options.deadline}",
        f"--worker={node.ws_url} {secret}",
    ]
    out, err, code = yield getProcessOutputAndValue(
        sys.executable, args, env=dict(os.environ), reactor=reactor
    )
    cpu = cpu_seconds(node.process.pid) - cpu_before
    probe.loop.stop()
    probe_client.stop()
    if code != 0:
        raise RuntimeError(f"storm worker failed: {err.decode(errors='replace')}")
    worker = json.loads(out)
    welcomed = worker["welcomed"]
    return {
        "clients": options.clients,
        "welcomed": len(welcomed),
        "refusals": worker["refusals"],
        "node_cpu": cpu,
        "welcome_p50": percentile(welcomed, 0.5),
        "welcome_p99": percentile(welcomed, 0.99),
        "welcome_max": max(welcomed, default=0.0),
        "ping_quiet_p50": percentile(quiet, 0.5),
        "ping_p50": percentile(probe.rtts, 0.5),
        "ping_p99": percentile(probe.rtts, 0.99),
        "ping_max": max(probe.rtts, default=0.0),
    }


def run_worker(options: argparse.Namespace) -> int:
    """The storm side: print what the clients saw as JSON."""
    from twisted.internet import reactor

    result: dict[str, Any] = {}
    d = storm_worker(reactor, options)
    d.addCallback(result.update)
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
    print(json.dumps(result))
    return 0 if result else 1


def main() -> int:
    """Start the node, run the storm, print the figures, stop the node."""
    options = parse()
    if options.worker:
        return run_worker(options)
    from twisted.internet import reactor

    node = LocalNode(
        "storm-" + secrets.token_hex(3),
        options.redis,
        options.kafka,
        secrets.token_urlsafe(32),
        Path(tempfile.mkdtemp(prefix="wsha-storm-")),
        extra_args=[
            f"--accept-rate={options.accept_rate}",
            f"--accept-burst={options.accept_burst}",
        ],
    )
    node.start()
    result: dict[str, Any] = {}
    try:
        node.wait_ready()
        d = storm(reactor, options, node)
        d.addCallback(result.update)
        d.addErrback(lambda f: result.update(error=f.getErrorMessage()))
        d.addBoth(lambda _: reactor.stop())
        reactor.run()
    finally:
        node.stop()
    if "error" in result:
        print(f"storm failed: {result['error']}")
        return 1
    limit = (
        f"{options.accept_rate:g}/s burst {options.accept_burst}"
        if options.accept_rate > 0
        else "no limit"
    )
    print(f"{result['clients']} clients at once, admission {limit}")
    print(f"  welcomed      {result['welcomed']} ({result['refusals']} refusals, 1013)")
    print(
        "  welcome after p50 {welcome_p50:.2f}s  p99 {welcome_p99:.2f}s  "
        "max {welcome_max:.2f}s".format(**result)
    )
    print(f"  node CPU      {result['node_cpu']:.1f} s")
    print(
        "  probe ping    quiet p50 {:.1f} ms; storm p50 {:.1f} ms  p99 {:.1f} ms  "
        "max {:.1f} ms".format(
            1000 * result["ping_quiet_p50"],
            1000 * result["ping_p50"],
            1000 * result["ping_p99"],
            1000 * result["ping_max"],
        )
    )
    return 0 if result["welcomed"] == result["clients"] else 1


if __name__ == "__main__":
    sys.exit(main())
