"""Service instances a test owns: started on free ports, stopped and restarted
at will, never the shared ones other tests use."""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from wsha.localcluster import free_port

REPO = Path(__file__).resolve().parents[2]

# The script for each service and the variable that moves its port.
_SCRIPTS = {"redis": "WSHA_REDIS_PORT", "kafka-broker": "WSHA_KAFKA_PORT"}


@dataclass
class OwnedService:
    """One Redis or Kafka broker run by ``scripts/<name>`` on its own port.

    The methods block (they wait for the script); call them from fixtures or
    through ``deferToThread`` inside a running test.
    """

    name: str
    port: int = field(default_factory=free_port)
    # Kafka's KRaft controller listens on a second port, kept across restarts.
    controller_port: int = field(default_factory=free_port)

    def _run(self, action: str) -> int:
        env = dict(os.environ, **{_SCRIPTS[self.name]: str(self.port)})
        if self.name == "kafka-broker":
            env["WSHA_KAFKA_CONTROLLER_PORT"] = str(self.controller_port)
        script = str(REPO / "scripts" / self.name)
        return subprocess.run(
            [script, action], cwd=REPO, env=env, check=False, capture_output=True
        ).returncode

    def start(self) -> None:
        """Start it and wait until it serves; raise if it does not."""
        if self._run("start") != 0:
            raise RuntimeError(f"scripts/{self.name} start failed on {self.port}")

    def stop(self) -> None:
        """Stop it (a clean shutdown by the script)."""
        if self._run("stop") != 0:
            raise RuntimeError(f"scripts/{self.name} stop failed on {self.port}")

    def pid(self) -> int:
        """The process id from the script's pidfile (to freeze it, say)."""
        kind = "redis" if self.name == "redis" else "kafka"
        path = REPO / ".run" / f"{kind}-{self.port}" / f"{kind}.pid"
        return int(path.read_text().split()[0])

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"


def ports_free(base: int, count: int) -> bool:
    for port in range(base, base + count):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


@dataclass
class SentinelSet:
    """A Sentinel set run by ``scripts/redis-sentinel`` on ``base``..``base+4``."""

    base: int

    def run(self, action: str) -> str:
        """Run the script with ``action``; return its output, raise on failure."""
        env = dict(os.environ, WSHA_SENTINEL_BASE_PORT=str(self.base))
        done = subprocess.run(
            [str(REPO / "scripts" / "redis-sentinel"), action],
            cwd=REPO,
            env=env,
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"redis-sentinel {action}: {done.stderr}{done.stdout}")
        return done.stdout.strip()

    @property
    def url(self) -> str:
        """The node's ``--redis`` URL for this set."""
        hosts = ",".join(f"127.0.0.1:{self.base + i}" for i in (2, 3, 4))
        return f"sentinel://{hosts}/wsha/0"

    def master_port(self) -> int:
        """The current master's port, as the sentinels say."""
        return int(self.run("master").rpartition(":")[2])


def start_sentinels() -> SentinelSet:
    """A started Sentinel set on five free consecutive ports."""
    base = free_port()
    while not ports_free(base, 5):
        base = free_port()
    running = SentinelSet(base)
    running.run("start")
    return running
