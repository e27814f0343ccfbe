"""Redis Sentinel: a node given a ``sentinel://`` URL follows the master through
a failover, a requested one and a crash, without a restart.

The module runs its own Sentinel set (``scripts/redis-sentinel``: a master, a
replica and three sentinels) on free ports. A failover counts as followed once
a send is acknowledged *and* its message is on the new master: until then the
node may still be writing to the old one.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from tests.integration.conftest import Cluster, Services, start_nodes
from tests.integration.owned import SentinelSet, start_sentinels
from tests.integration.support import wait_for, within
from tests.integration.test_delivery import users
from tests.integration.test_redis_outage import FAST, new_client
from wsha import keys
from wsha.client import GatewayClient

# Seconds from the start of a failover until sends reach the new master.
# Requested: Sentinel's own switch (~1 s) plus one health round of the node.
# Crash: the sentinels' down-after (1 s), their vote and switch, the same.
REQUESTED_BOUND = 10.0
CRASH_BOUND = 15.0


def inbox_ids(port: int, user: str) -> list[str]:
    """The ids in ``user``'s inbox on the Redis at ``port`` (blocking)."""
    command = ["XRANGE", keys.inbox(user), "-", "+"]
    done = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), "--raw", *command],
        capture_output=True,
        text=True,
        timeout=5,
        check=True,
    )
    return [line for line in done.stdout.split() if line[:1].isdigit() and "-" in line]


@pytest.fixture(scope="module")
def sentinels() -> Iterator[SentinelSet]:
    """A Sentinel set of this module's own."""
    running = start_sentinels()
    yield running
    running.run("stop")


@pytest.fixture(scope="module")
def sentinel_node(services: Services, sentinels: SentinelSet) -> Iterator[Cluster]:
    """One node that finds Redis through the module's sentinels."""
    running = start_nodes(Services(sentinels.url, services.kafka), 1, FAST)
    yield running
    for each in running.nodes:
        each.stop()


@pytest_twisted.inlineCallbacks
def sends_reach(
    client: GatewayClient, to: str, sentinels: SentinelSet, old: int, prefix: str
) -> Any:
    """Send until a message is acknowledged and is on a master other than
    ``old``; fire with (seconds it took, the client ids sent)."""
    started = reactor.seconds()
    sent: list[str] = []

    @pytest_twisted.inlineCallbacks
    def probe() -> Any:
        # Asked before sending: a message sent after the sentinels named the
        # new master can only be on it if the node wrote it there.
        port = yield deferToThread(sentinels.master_port)
        client_id = f"{prefix}-{len(sent)}"
        sent.append(client_id)
        ack = yield within(client.send(to, client_id, client_id=client_id), 10)
        if port == old:
            return False
        ids = yield deferToThread(inbox_ids, port, to)
        return ack["inbox"] in ids

    yield wait_for(probe, CRASH_BOUND + 5, "a send stored on the new master")
    return reactor.seconds() - started, sent


@pytest_twisted.inlineCallbacks
def follow_failover(
    cluster: Cluster, sentinels: SentinelSet, action: str, bound: float
) -> Any:
    """Run ``scripts/redis-sentinel <action>`` under traffic; assert the node
    writes to the new master within ``bound`` seconds, that the receiver never
    reconnected, and that every send was delivered once."""
    alice, bob = users("alice", "bob")
    got: list[Any] = []
    a = new_client(cluster, alice, [])
    b = new_client(cluster, bob, got)
    try:
        yield within(a.when_connected())
        yield within(b.when_connected())
        yield within(a.send(bob, "before", client_id="before"))
        old = yield deferToThread(sentinels.master_port)

        failing_over = deferToThread(sentinels.run, action)
        took, sent = yield sends_reach(a, bob, sentinels, old, action)
        yield within(failing_over, 60)
        assert took < bound, f"{action}: sends reached the new master after {took}s"

        expected = {"before", *sent}

        def delivered() -> set[str]:
            return {m["body"] for m in got}

        arrived = wait_for(lambda: delivered() >= expected, 15, "every send")
        yield arrived.addErrback(lambda _: None)
        assert not expected - delivered(), f"lost: {sorted(expected - delivered())}"
        assert len(got) == len(expected)
        assert b.stats.duplicates_dropped == 0 and b.stats.connects == 1
        assert cluster.nodes[0].process is not None
        assert cluster.nodes[0].process.poll() is None
        print(f"\nsentinel {action}: sends on the new master after {took:.2f}s")
    finally:
        a.stop()
        b.stop()


@pytest_twisted.inlineCallbacks
def test_requested_failover_is_followed(
    sentinel_node: Cluster, sentinels: SentinelSet
) -> Any:
    """SENTINEL FAILOVER: the node moves its writes to the promoted replica within
    the bound, without a restart; the receiver stays connected and gets each
    message once."""
    yield follow_failover(sentinel_node, sentinels, "failover", REQUESTED_BOUND)


@pytest_twisted.inlineCallbacks
def test_master_crash_is_followed(
    sentinel_node: Cluster, sentinels: SentinelSet
) -> Any:
    """The master is killed (SIGKILL): once the sentinels promote the replica,
    the node writes to it within the bound, without a restart."""
    yield follow_failover(sentinel_node, sentinels, "kill-master", CRASH_BOUND)
