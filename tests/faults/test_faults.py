"""Faults injected while hundreds of clients exchange numbered messages through
HAProxy. Each case asserts that no accepted message is lost or duplicated,
that presence matches the live connections, and prints recovery times."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.internet.threads import deferToThread

from tests.faults.conftest import FaultCluster, record
from tests.integration.support import http_json, wait_for
from wsha.loadgen import Traffic, percentile

USERS = int(os.environ.get("WSHA_FAULT_USERS", "300"))
RATE = 2.0  # messages per second per user
PRESENCE_BOUND = 10.0  # seconds for presence to match the live connections


def traffic_for(cluster: FaultCluster, users: int = USERS) -> Traffic:
    """Traffic between ``users`` clients, all connecting through the balancer."""
    return Traffic(
        reactor,
        lambda i: cluster.balancer.ws_url,
        cluster.token,
        users,
        rate=RATE,
    )


@defer.inlineCallbacks
def online_sessions(cluster: FaultCluster, user: str) -> Any:
    """The user's online sessions as the control API reports them."""
    node = cluster.nodes[-1]
    status, info = yield http_json("GET", f"{node.control_url}/v1/users/{user}")
    assert status == 200, info
    return [s for s in info["sessions"] if s.get("online")]


@defer.inlineCallbacks
def presence_matches(cluster: FaultCluster, traffic: Traffic) -> Any:
    """True if every connected user shows exactly one online session."""
    for u in traffic.users:
        sessions = yield online_sessions(cluster, u.user)
        expected = 1 if u.client.welcome is not None else 0
        if len(sessions) != expected:
            return False
    return True


@defer.inlineCallbacks
def run_case(cluster: FaultCluster, name: str, fault: Any, settle: float = 90) -> Any:
    """Connect, send, inject ``fault`` (a function returning a Deferred), wait for
    every client to be resumed and every accepted message delivered, then
    report and assert."""
    traffic = traffic_for(cluster)
    try:
        yield traffic.connect(120)
        traffic.start_sending()
        yield wait_for(lambda: traffic.report().accepted > USERS, 30, "traffic")

        moment = time.monotonic()
        yield fault(traffic)
        yield wait_for(lambda: traffic.resumed_since(moment), 120, "clients resumed")
        resumed_at = time.monotonic() - moment
        # Everything accepted up to now, the fault's time included, must arrive.
        ended = time.monotonic()
        snapshot = traffic.accepted_so_far()
        try:
            yield wait_for(lambda: traffic.delivered_all(snapshot), settle, "catch-up")
        except AssertionError:
            record(f"[{name}] not caught up: {traffic.report()}")
            raise
        caught_up = time.monotonic() - ended

        yield wait_for(
            lambda: traffic.report().accepted > 2 * USERS, 30, "more traffic"
        )
        traffic.stop_sending()
        yield wait_for(traffic.settled, settle, "every accepted message delivered")
        yield wait_for(
            lambda: presence_matches(cluster, traffic), PRESENCE_BOUND, "presence"
        )
        report = traffic.report()
        times = traffic.recovery_times(moment)
        record(
            f"[{name}] sent {report.sent} accepted {report.accepted} "
            f"delivered {report.delivered} lost {report.lost} "
            f"duplicated {report.duplicated + report.server_duplicates} "
            f"reordered {report.reordered}; {len(times)} clients reconnected, "
            f"resumed p50 {percentile(times, 0.5):.2f}s "
            f"p99 {percentile(times, 0.99):.2f}s, all resumed {resumed_at:.2f}s "
            f"after the fault began; delivery caught up {caught_up:.2f}s after it"
        )
        assert report.clean, report
        assert report.delivered == report.accepted
        return report, times
    finally:
        traffic.stop()


@pytest_twisted.inlineCallbacks
def test_node_killed_with_sigkill(fault_cluster: FaultCluster) -> Any:
    """A node dies without warning: its clients reconnect through HAProxy to
    the survivors, its presence is cleaned, nothing accepted is lost."""
    victim = fault_cluster.nodes[0]

    def kill(traffic: Traffic) -> Any:
        return deferToThread(victim.kill)

    _, times = yield run_case(fault_cluster, "node SIGKILL", kill)
    assert times, "no client was on the killed node"
    fault_cluster.nodes.remove(victim)


@pytest_twisted.inlineCallbacks
def test_redis_frozen_longer_than_its_timeouts(fault_cluster: FaultCluster) -> Any:
    """Redis stops answering (SIGSTOP) for longer than the nodes' Redis timeout:
    links stay open, sends are refused as retryable and retried, and
    everything catches up by itself once Redis answers again."""
    assert fault_cluster.redis is not None
    pid = fault_cluster.redis.pid()

    @defer.inlineCallbacks
    def freeze(traffic: Traffic) -> Any:
        os.kill(pid, signal.SIGSTOP)
        try:
            yield deferLater(5.0)
        finally:
            os.kill(pid, signal.SIGCONT)

    yield run_case(fault_cluster, "Redis frozen 5s", freeze)


@pytest_twisted.inlineCallbacks
def test_redis_failed_over_through_sentinel(sentinel_cluster: FaultCluster) -> Any:
    """Sentinel promotes the replica while traffic flows: the nodes follow the
    new master without a restart, and nothing accepted is lost."""
    sentinels = sentinel_cluster.sentinels
    assert sentinels is not None

    def failover(traffic: Traffic) -> Any:
        return deferToThread(sentinels.run, "failover")

    yield run_case(sentinel_cluster, "Redis Sentinel failover", failover)


@pytest_twisted.inlineCallbacks
def test_kafka_broker_stopped(fault_cluster: FaultCluster) -> Any:
    """The broker stops and comes back: every message is still delivered, by
    inbox polling meanwhile and by notices again afterwards."""

    @defer.inlineCallbacks
    def outage(traffic: Traffic) -> Any:
        yield deferToThread(fault_cluster.kafka.stop)
        yield deferLater(3.0)
        yield deferToThread(fault_cluster.kafka.start)

    yield run_case(fault_cluster, "Kafka stopped", outage)


def deferLater(seconds: float) -> Any:
    """Fire after ``seconds`` on the reactor."""
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)


class PeerProcess(protocol.ProcessProtocol):
    """Collects the JSON event lines of tests/faults/peer.py."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._buffer = b""
        self.ended: defer.Deferred[Any] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        """Split stdout into events."""
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        self.events.extend(json.loads(line) for line in lines if line)

    def processEnded(self, reason: Any) -> None:
        """Fire ``ended``."""
        self.ended.callback(None)

    def seqs(self) -> list[int]:
        """The seqs of the messages received, in order."""
        return [e["seq"] for e in self.events if "seq" in e]

    def welcomes(self) -> int:
        """How many times the peer was welcomed."""
        return sum(1 for e in self.events if "welcome" in e)


@pytest_twisted.inlineCallbacks
def test_blackholed_client_is_dropped_and_resumes(fault_cluster: FaultCluster) -> Any:
    """A client process frozen with SIGSTOP (no FIN, no RST) stops answering
    pings: its node closes the link and clears its presence within the ping
    bound; thawed, it reconnects and gets every message sent meanwhile, once."""
    import sys

    from tests.integration.test_delivery import users

    receiver, sender = users("frozen", "talker")
    peer = PeerProcess()
    here = os.path.dirname(__file__)
    transport = reactor.spawnProcess(
        peer,
        sys.executable,
        [
            sys.executable,
            os.path.join(here, "peer.py"),
            fault_cluster.balancer.ws_url,
            fault_cluster.token(receiver),
            "dev",
        ],
        env=dict(os.environ),
    )
    from wsha.client import GatewayClient

    talker = GatewayClient(
        reactor,
        fault_cluster.balancer.ws_url,
        fault_cluster.token(sender),
        "s",
        lambda frame: None,
    )
    talker.start()
    try:
        yield wait_for(lambda: peer.welcomes() == 1, 30, "peer connected")
        yield talker.when_connected()
        acked = []
        for seq in range(10):
            acked.append((yield talker.send(receiver, {"seq": seq})))
        yield wait_for(lambda: len(peer.seqs()) == 10, 10, "live delivery")

        os.kill(transport.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        yield wait_for(
            lambda: online_sessions(fault_cluster, receiver).addCallback(
                lambda sessions: not sessions
            ),
            1 + 2 + PRESENCE_BOUND,
            "presence of the frozen client cleared",
        )
        cleared_in = time.monotonic() - frozen_at
        for seq in range(10, 30):
            yield talker.send(receiver, {"seq": seq})

        os.kill(transport.pid, signal.SIGCONT)
        thawed_at = time.monotonic()
        yield wait_for(lambda: len(peer.seqs()) >= 30, 30, "replay after thaw")
        resumed_in = time.monotonic() - thawed_at
        yield wait_for(
            lambda: online_sessions(fault_cluster, receiver).addCallback(
                lambda sessions: len(sessions) == 1
            ),
            PRESENCE_BOUND,
            "presence back",
        )
        record(
            f"[blackholed client] presence cleared {cleared_in:.2f}s after "
            f"freezing; all 30 delivered {resumed_in:.2f}s after thawing"
        )
        assert peer.seqs() == list(range(30))
    finally:
        talker.stop()
        if transport.pid is not None:
            os.kill(transport.pid, signal.SIGCONT)
            transport.signalProcess("KILL")
        yield peer.ended


STORM_USERS = int(os.environ.get("WSHA_STORM_USERS", "2000"))


@pytest_twisted.inlineCallbacks
def test_reconnect_storm_of_two_thousand_clients(fault_cluster: FaultCluster) -> Any:
    """HAProxy cuts every client link at once (as a balancer restart would):
    all of them reconnect together, the nodes admit them at their configured
    rate and turn the rest away with 1013, and every client is resumed with
    nothing lost."""
    api = fault_cluster.balancer.api
    traffic = Traffic(
        reactor,
        lambda i: fault_cluster.balancer.ws_url,
        fault_cluster.token,
        STORM_USERS,
        rate=0.2,
        window=5,
    )
    try:
        yield traffic.connect(180)
        traffic.start_sending()
        yield wait_for(
            lambda: traffic.report().accepted > STORM_USERS // 2, 60, "sends"
        )

        slots = yield deferToThread(api.slots)
        moment = time.monotonic()
        for slot in slots:
            if not slot.free:
                yield deferToThread(
                    api.execute, f"shutdown sessions server {api.backend}/{slot.name}"
                )
        yield wait_for(
            lambda: traffic.resumed_since(moment), 180, "every client resumed"
        )
        all_in = time.monotonic() - moment
        traffic.stop_sending()
        yield wait_for(traffic.settled, 120, "every accepted message delivered")
        report = traffic.report()
        times = traffic.recovery_times(moment)
        refused = sum(u.client.stats.closes.get(1013, 0) for u in traffic.users)
        record(
            f"[reconnect storm] {len(times)} of {STORM_USERS} clients cut; "
            f"resumed p50 {percentile(times, 0.5):.2f}s "
            f"p99 {percentile(times, 0.99):.2f}s, all in {all_in:.2f}s; "
            f"{refused} connects turned away with 1013; sent {report.sent} "
            f"delivered {report.delivered} lost {report.lost} "
            f"duplicated {report.duplicated + report.server_duplicates}"
        )
        assert len(times) == STORM_USERS
        assert report.clean, report
        assert report.delivered == report.accepted
    finally:
        traffic.stop()
