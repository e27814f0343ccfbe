"""Run gateway nodes as local ``twistd`` processes (demo, tests, benchmarks).

These helpers block (they start processes and poll HTTP) and are meant for
scripts and test fixtures, never for code running on a node's reactor.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The HTTP status of GET ``url``, or None if nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (OSError, urllib.error.URLError):
        return None


@dataclass
class LocalNode:
    """One gateway node in a child ``twistd -n wsha`` process on 127.0.0.1."""

    node_id: str
    redis_url: str
    kafka: str
    jwt_secret: str
    run_dir: Path
    ws_port: int = field(default_factory=free_port)
    control_port: int = field(default_factory=free_port)
    extra_args: list[str] = field(default_factory=list)
    tac_file: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    # A session of its own: the process outlives the tool that started it and
    # does not get the tool's terminal signals (Ctrl-C).
    detach: bool = False

    @property
    def ws_url(self) -> str:
        """The node's WebSocket URL."""
        return f"ws://127.0.0.1:{self.ws_port}/ws"

    @property
    def control_url(self) -> str:
        """The base URL of the node's control API."""
        return f"http://127.0.0.1:{self.control_port}"

    @property
    def log_path(self) -> Path:
        """Where the node's log goes."""
        return self.run_dir / f"{self.node_id}.log"

    def start(self) -> None:
        """Start the process (returns at once; see :meth:`wait_ready`).

        With ``tac_file`` set the node is built by ``twistd -ny <tac_file>`` from
        ``WSHA_*`` variables; otherwise by the ``wsha`` plugin from options.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        settings = {
            "port": f"tcp:{self.ws_port}:interface=127.0.0.1",
            "control-port": f"tcp:{self.control_port}:interface=127.0.0.1",
            "redis": self.redis_url,
            "kafka": self.kafka,
            "node-id": self.node_id,
        }
        twistd = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            f"--logfile={self.log_path}",
        ]
        env = dict(os.environ, WSHA_JWT_SECRET=self.jwt_secret)
        if self.tac_file is None:
            options = [f"--{name}={value}" for name, value in settings.items()]
            command = [*twistd, "wsha", *options, *self.extra_args]
        else:
            for name, value in settings.items():
                env["WSHA_" + name.replace("-", "_").upper()] = value
            command = [*twistd, "-y", str(self.tac_file)]
        with open(self.log_path.with_suffix(".err"), "wb") as errors:
            self.process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                start_new_session=self.detach,
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Return once ``/readyz`` answers 200; raise with the log tail otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"node {self.node_id} exited:\n{self.log_tail()}")
            if http_status(f"{self.control_url}/readyz") == 200:
                return
            time.sleep(0.05)
        raise RuntimeError(
            f"node {self.node_id} not ready in {timeout}s:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 30.0) -> int | None:
        """Stop with SIGTERM, killing after ``timeout``; return the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def wait_exit(self, timeout: float = 60.0) -> int | None:
        """Wait until the node's process has exited; return its exit code.

        A process this object did not start is watched through its control
        port: it has exited once ``/healthz`` no longer answers (None then).

        :raises TimeoutError: if it still runs after ``timeout`` seconds.
        """
        if self.process is not None:
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                raise TimeoutError(f"node {self.node_id} still runs") from None
        deadline = time.monotonic() + timeout
        while http_status(f"{self.control_url}/healthz", timeout=1.0) is not None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {self.node_id} still answers")
            time.sleep(0.05)
        return None

    def kill(self) -> None:
        """Kill at once (SIGKILL), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the node's log and error output."""
        text = ""
        for path in (self.log_path, self.log_path.with_suffix(".err")):
            if path.exists():
                text += "".join(
                    path.read_text(errors="replace").splitlines(True)[-lines:]
                )
        return text
