"""A rolling update of three nodes behind HAProxy while 1,000 clients talk.

Every node is restarted in turn by :class:`wsha.rolling.RollingUpdate` (out
of HAProxy's rotation, drained by SIGTERM or ``POST /v1/admin/drain``, started
again, back in rotation) while the clients exchange numbered messages through
the balancer. Nothing accepted may be lost, duplicated or reordered, HAProxy
may refuse no connection (its own counters say so), and the latency from send
to delivery during the update is reported in the run's summary.

``WSHA_ROLLING_USERS`` changes the number of clients (1,000 by default).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from tests.integration.conftest import RUN_DIR, Services, record
from tests.integration.lb import LocalHAProxy
from tests.integration.support import wait_for
from tests.integration.test_drain import balancer_errors
from wsha import wire
from wsha.auth import mint_token
from wsha.loadgen import Traffic, percentile
from wsha.localcluster import LocalNode
from wsha.rolling import API, SIGNAL, RollingUpdate, format_table

USERS = int(os.environ.get("WSHA_ROLLING_USERS", "1000"))
# Messages per second per client, made in 20 steps a second rather than in
# one burst: 500 a second over the cluster, well within what these 2-core test
# machines carry (at 1,000 a second, the latency before any update is already
# a second at p50 there).
RATE = 0.5
TOKEN = "rolling-test-token"
# Drained over 8 s after a 2 s grace (HAProxy sees /readyz fail in about
# 1.5 s); a client told to move has 10 s before it is closed with 1012.
NODE_SETTINGS = [
    f"--control-token={TOKEN}",
    "--drain-grace=2",
    "--drain-window=8",
    "--drain-move-timeout=10",
    "--drain-timeout=30",
]

pytestmark = [pytest.mark.load, pytest.mark.timeout(600)]


@pytest.fixture
def three_nodes(services: Services, haproxy: LocalHAProxy) -> Iterator[list[LocalNode]]:
    """Three fresh nodes in rotation behind HAProxy; killed after the test."""
    secret = secrets.token_urlsafe(32)
    tag = secrets.token_hex(3)
    nodes = [
        LocalNode(
            f"roll-{tag}-{i}",
            services.redis_url,
            services.kafka,
            secret,
            RUN_DIR,
            extra_args=list(NODE_SETTINGS),
        )
        for i in (1, 2, 3)
    ]
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready()
            haproxy.add(node)
        for node in nodes:
            haproxy.wait_state(node, "up", 15)
        yield nodes
    finally:
        for node in nodes:
            node.kill()


def spread(latencies: list[float]) -> str:
    """p50, p99 and max of ``latencies`` in milliseconds."""
    return (
        f"p50 {percentile(latencies, 0.5) * 1000:.0f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms, "
        f"max {max(latencies, default=0.0) * 1000:.0f} ms"
    )


@pytest_twisted.inlineCallbacks
def test_rolling_update_loses_duplicates_and_refuses_nothing(
    three_nodes: list[LocalNode], haproxy: LocalHAProxy
) -> Any:
    """Restarting each of three nodes in turn under 1,000 talking clients
    loses, duplicates and reorders nothing, refuses no connection at HAProxy,
    and moves every client make-before-break (no close but its own 4001)."""
    secret = three_nodes[0].jwt_secret
    traffic = Traffic(
        reactor,
        lambda i: haproxy.ws_url,
        lambda user: mint_token(secret, user, 3600),
        USERS,
        rate=RATE,
        slices=20,
    )
    stopped: list[int | None] = []
    for u in traffic.users:
        u.client.on_stopped = lambda code, reason: stopped.append(code)
    lines: list[str] = []
    update = RollingUpdate(haproxy.api, three_nodes, TOKEN, report=lines.append)
    try:
        began = time.monotonic()
        yield traffic.connect(120)
        connected = time.monotonic() - began
        traffic.start_sending()
        yield wait_for(lambda: traffic.report().accepted > 3 * USERS, 60, "traffic")

        update_began = time.monotonic()
        times = yield deferToThread(update.run, [SIGNAL, API, SIGNAL])
        update_ended = time.monotonic()

        yield wait_for(
            lambda: all(u.client.welcome is not None for u in traffic.users),
            30,
            "every client connected",
        )
        accepted = traffic.report().accepted
        yield wait_for(
            lambda: traffic.report().accepted > accepted + 2 * USERS,
            30,
            "traffic after the update",
        )
        traffic.stop_sending()
        yield wait_for(traffic.settled, 60, "every accepted message delivered")

        report = traffic.report()
        during = traffic.latencies(update_began, update_ended)
        before = traffic.latencies(0.0, update_began)
        moves = [u.client.stats.moves for u in traffic.users]
        closes: dict[int, int] = {}
        for u in traffic.users:
            for code, count in u.client.stats.closes.items():
                closes[code] = closes.get(code, 0) + count
        errors = yield deferToThread(balancer_errors, haproxy)
        record(
            f"[rolling update, {USERS} clients, 3 nodes] connected in "
            f"{connected:.1f}s; update took {update_ended - update_began:.1f}s; "
            f"sent {report.sent} accepted {report.accepted} delivered "
            f"{report.delivered} lost {report.lost} duplicated "
            f"{report.duplicated + report.server_duplicates} reordered "
            f"{report.reordered} rejected {report.rejected}; moves {sum(moves)} "
            f"(every client at least {min(moves)}); closes {closes}; "
            f"HAProxy errors {errors}"
        )
        record(f"[rolling update] send->deliver latency before: {spread(before)}")
        record(f"[rolling update] send->deliver latency during: {spread(during)}")
        for line in format_table(times).splitlines():
            record(f"[rolling update] {line}")

        assert report.clean, report
        assert report.rejected == 0 and report.delivered == report.accepted
        assert stopped == []
        assert min(moves) >= 1, "a client was never moved"
        assert set(closes) <= {wire.CLOSE_TAKEN_OVER}, closes
        assert not any(errors.values()), (errors, haproxy.log_tail(20))
        assert during, "no message was sent during the update"
    except BaseException:
        record(
            f"[rolling update] failed; traffic so far (messages in flight count "
            f"as lost): {traffic.report()}; steps: {lines}"
        )
        raise
    finally:
        traffic.stop()
