"""The ways operators run a node: the twistd plugin and the .tac file."""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from tests.integration.conftest import REPO, RUN_DIR, Cluster, Services
from tests.integration.support import http_json, wait_for, within
from tests.integration.test_delivery import client, users
from wsha.client import GatewayClient
from wsha.localcluster import LocalNode


def test_twistd_help_documents_every_option() -> None:
    """``twistd wsha --help`` lists every node option."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "wsha",
            "--help",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    ).stdout
    for option in (
        "--port",
        "--control-port",
        "--redis",
        "--kafka",
        "--node-id",
        "--jwt-secret",
        "--inbox-max-length",
        "--inbox-ttl",
        "--max-message-bytes",
    ):
        assert option in out


def test_missing_jwt_secret_is_a_usage_error() -> None:
    """A node without a JWT key refuses to start, naming the missing setting."""
    result = subprocess.run(  # noqa: PLW1510 (the exit status is asserted)
        [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "wsha",
            "--port=tcp:0",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert "JWT" in result.stdout + result.stderr


@pytest_twisted.inlineCallbacks
def test_health_and_readiness_answer(cluster: Cluster) -> Any:
    """/healthz and /readyz answer 200 with the node id on a running node."""
    node = cluster.nodes[0]
    status, health = yield http_json("GET", f"{node.control_url}/healthz")
    assert status == 200 and health["node"] == node.node_id
    status, ready = yield http_json("GET", f"{node.control_url}/readyz")
    assert status == 200 and ready["ready"] is True and ready["redis"] is True


@pytest_twisted.inlineCallbacks
def test_tac_file_builds_a_working_node(services: Services, cluster: Cluster) -> Any:
    """``twistd -ny tac/wsha.tac`` runs a node that serves clients alongside the
    plugin-built nodes and stops cleanly on SIGTERM."""
    tac_node = LocalNode(
        "it-tac",
        services.redis_url,
        services.kafka,
        cluster.secret,
        RUN_DIR,
        tac_file=REPO / "tac" / "wsha.tac",
    )
    tac_node.start()
    try:
        yield deferToThread(tac_node.wait_ready)
        alice, bob = users("alice", "bob")
        got: list[Any] = []
        a = client(cluster, 0, alice, "laptop", [])
        b = GatewayClient(
            reactor, tac_node.ws_url, lambda: cluster.token(bob), "phone", got.append
        )
        b.start()
        welcome = yield within(b.when_connected())
        assert welcome["node"] == "it-tac"
        yield within(a.when_connected())
        yield within(a.send(bob, {"seq": 1}))
        yield wait_for(lambda: got, 10, "message via the tac-built node")
        a.stop()
        b.stop()
    finally:
        code = yield deferToThread(tac_node.stop)
    # twistd ends a SIGTERM shutdown by re-raising the signal on itself, so a
    # clean stop exits with -SIGTERM; a hung one would be SIGKILLed (-9).
    assert code in (0, -signal.SIGTERM), tac_node.log_tail()
    assert "Server Shut Down" in tac_node.log_tail()


def test_node_whose_port_is_taken_exits(services: Services) -> None:
    """A node that cannot listen on its WebSocket port stops its process
    instead of running on without serving."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        node = LocalNode(
            "it-taken-port",
            services.redis_url,
            services.kafka,
            "a-secret-long-enough-for-hs256-keys!",
            RUN_DIR,
            ws_port=taken.getsockname()[1],
        )
        node.start()
        try:
            assert node.process is not None
            node.process.wait(60)
        finally:
            node.kill()
    assert "could not start" in node.log_tail(80)
