"""NodeConfig: every setting of a node, from twistd options or the environment."""

from __future__ import annotations

import json
import os
import re
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from wsha import __version__
from wsha.services.redis_url import parse_redis_url

TOPIC_PATTERN = re.compile(r"^[A-Za-z0-9._\-]{1,249}$")
"""What Kafka accepts as a topic name."""

VERSION_LABEL_PATTERN = re.compile(r"^[A-Za-z0-9._+\-]{1,64}$")
"""What a version label may be (it is named in balancer policies, ``LABEL=...``)."""


def generate_node_id() -> str:
    """A node id unique across restarts: host name plus a random suffix."""
    host = socket.gethostname().split(".")[0] or "node"
    return f"{host}-{uuid.uuid4().hex[:8]}"


def setting(default: Any, help: str) -> Any:
    """A configuration field with its one-line help for ``twistd wsha --help``."""
    return field(default=default, metadata={"help": help})


@dataclass
class NodeConfig:
    """A gateway node's configuration; ``twistd wsha --help`` lists every field."""

    port: str = setting(
        "tcp:8080:interface=127.0.0.1", "WebSocket endpoint (Twisted strports)."
    )
    control_port: str = setting(
        "tcp:8081:interface=127.0.0.1", "Control API endpoint (Twisted strports)."
    )
    redis: str = setting(
        "redis://127.0.0.1:6379/0",
        "Redis URL redis://[user:password@]host:port/db, or "
        "sentinel://[user:password@]host:port[,host:port...]/<master-name>/<db>.",
    )
    kafka: str = setting("127.0.0.1:9092", "Kafka bootstrap servers host:port[,...].")
    node_id: str = field(
        default_factory=generate_node_id,
        metadata={"help": "This node's id [default: host name + random suffix]."},
    )
    jwt_secret: str = setting("", "Key that verifies client tokens (required).")
    jwt_algorithms: str = setting("HS256", "Comma-separated JWT algorithms accepted.")
    jwt_audience: str = setting("", "Required 'aud' claim of client tokens, if any.")
    control_token: str = setting("", "Bearer token the control API's commands need.")
    max_message_bytes: int = setting(
        128 * 1024, "Largest WebSocket message; larger closes with 1009."
    )
    max_body_bytes: int = setting(64 * 1024, "Largest 'send' body, as JSON bytes.")
    inbox_max_length: int = setting(10_000, "Messages kept per inbox (exact).")
    inbox_ttl: int = setting(7 * 24 * 3600, "Seconds an inbox lives after a message.")
    dedupe_ttl: int = setting(24 * 3600, "Seconds a client message id is remembered.")
    session_ttl: int = setting(
        7 * 24 * 3600, "Seconds session state lives after its last connect or ack."
    )
    max_sessions_per_user: int = setting(
        16, "Sessions (devices) a user may have online at once (0: no limit)."
    )
    group_history_length: int = setting(1000, "Messages kept per group (exact).")
    group_history_ttl: int = setting(
        7 * 24 * 3600, "Seconds a group's history lives after its last message."
    )
    max_groups_per_session: int = setting(256, "Groups one session may subscribe to.")
    consistency_interval: float = setting(
        60.0, "Seconds between consistency checks of groups and sessions (0: none)."
    )
    redis_timeout: float = setting(5.0, "Seconds to wait for Redis to connect/answer.")
    redis_min_replicas: int = setting(
        0, "Replicas that must confirm a message before it is acked (Sentinel: 1)."
    )
    redis_replica_wait_ms: int = setting(
        500, "Milliseconds to wait for those replicas; then the send is retryable."
    )
    redis_health_interval: float = setting(
        1.0, "Seconds between Redis health PINGs (an outage is noticed this fast)."
    )
    redis_reconnect_max: float = setting(
        2.0, "Longest wait in seconds between Redis reconnect attempts."
    )
    accept_rate: float = setting(
        200.0, "New WebSocket connections admitted per second (0: no limit)."
    )
    accept_burst: int = setting(
        400, "New connections admitted at once above the rate; the rest get 1013."
    )
    inbox_sweep_interval: float = setting(
        30.0, "Seconds between safety pulls of every inbox (0: none)."
    )
    kafka_fallback_interval: float = setting(
        1.0, "Seconds between inbox pulls while Kafka is unreachable."
    )
    ping_interval: float = setting(20.0, "Seconds between WebSocket pings (0: none).")
    ping_timeout: float = setting(10.0, "Seconds to wait for a pong before dropping.")
    public_url: str = setting(
        "", "WebSocket URL this node registers (empty: from --port's address)."
    )
    control_url: str = setting(
        "", "Control API URL this node registers (empty: from --control-port's)."
    )
    heartbeat_interval: float = setting(
        2.0, "Seconds between renewals of this node's registration in Redis."
    )
    heartbeat_ttl: float = setting(
        6.0, "Seconds without a heartbeat after which a node counts as dead."
    )
    reaper_interval: float = setting(
        2.0, "Seconds between scans for dead nodes to clean up after."
    )
    dead_topic_delay: float = setting(
        60.0, "Seconds from a dead node's cleanup to deleting its Kafka topic."
    )
    broadcast_topic: str = setting(
        "wsha.broadcast",
        "Kafka topic of system broadcasts (read by every node); it also names "
        "their history in Redis.",
    )
    broadcast_history_length: int = setting(
        1000, "System broadcasts kept for sessions that resume (exact)."
    )
    instrument_max_length: int = setting(
        1000, "Ticks kept per instrument by the control API's publish (MAXLEN ~)."
    )
    slow_client_timeout: float = setting(
        10.0, "Seconds a client may leave its output backed up; then 4008."
    )
    max_output_bytes: int = setting(
        1024 * 1024, "Bytes written to a backed-up client before closing with 4008."
    )
    drain_grace: float = setting(
        2.0,
        "Seconds a draining node fails /readyz before telling clients to move "
        "(time for the balancer to stop sending it new ones).",
    )
    drain_window: float = setting(
        10.0, "Seconds over which a draining node tells its clients to move, jittered."
    )
    drain_move_timeout: float = setting(
        10.0, "Seconds a client told to move has before its link is closed with 1012."
    )
    drain_timeout: float = setting(
        30.0, "Longest a drain (on SIGTERM or POST /v1/admin/drain) may take."
    )
    version_label: str = setting(
        __version__,
        "Version label this node registers; balancer policies (canary, "
        "blue/green) select nodes by it.",
    )
    log_format: str = setting(
        "text", "Log lines as 'text' (twistd's) or 'json' (one object per line)."
    )

    def check(self) -> None:
        """Raise ValueError naming the first setting that cannot work."""
        if not self.jwt_secret:
            raise ValueError("a JWT key is required (--jwt-secret or WSHA_JWT_SECRET)")
        if self.max_body_bytes >= self.max_message_bytes:
            raise ValueError("max-body-bytes must be below max-message-bytes")
        for name in (
            "inbox_max_length",
            "inbox_ttl",
            "dedupe_ttl",
            "session_ttl",
            "group_history_length",
            "group_history_ttl",
            "max_groups_per_session",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.replace('_', '-')} must be positive")
        if self.dedupe_ttl > min(self.inbox_ttl, self.group_history_ttl):
            raise ValueError(
                "dedupe-ttl must not exceed inbox-ttl nor group-history-ttl"
            )
        parse_redis_url(self.redis)
        for name in ("redis_timeout", "redis_health_interval", "redis_reconnect_max"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.replace('_', '-')} must be positive")
        if self.redis_min_replicas < 0 or self.redis_replica_wait_ms <= 0:
            raise ValueError(
                "redis-min-replicas must be >= 0 and redis-replica-wait-ms > 0"
            )
        if self.max_sessions_per_user < 0 or self.consistency_interval < 0:
            raise ValueError(
                "max-sessions-per-user and consistency-interval must not be negative"
            )
        if self.accept_rate < 0:
            raise ValueError("accept-rate must not be negative")
        if self.accept_burst < 1:
            raise ValueError("accept-burst must be at least 1")
        for name in ("heartbeat_interval", "heartbeat_ttl", "reaper_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.replace('_', '-')} must be positive")
        if self.heartbeat_ttl < 2 * self.heartbeat_interval:
            raise ValueError("heartbeat-ttl must be at least twice heartbeat-interval")
        if self.dead_topic_delay < 0:
            raise ValueError("dead-topic-delay must not be negative")
        if not TOPIC_PATTERN.match(self.broadcast_topic):
            raise ValueError("broadcast-topic must be a Kafka topic name")
        if self.broadcast_history_length <= 0:
            raise ValueError("broadcast-history-length must be positive")
        for name in ("instrument_max_length", "slow_client_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.replace('_', '-')} must be positive")
        if self.max_output_bytes < self.max_message_bytes:
            raise ValueError("max-output-bytes must be at least max-message-bytes")
        if not VERSION_LABEL_PATTERN.match(self.version_label):
            raise ValueError("version-label must be 1-64 characters A-Z a-z 0-9 ._+-")
        if self.log_format not in ("text", "json"):
            raise ValueError("log-format must be 'text' or 'json'")
        self._check_drain()

    def _check_drain(self) -> None:
        if min(self.drain_grace, self.drain_window) < 0:
            raise ValueError("drain-grace and drain-window must not be negative")
        if self.drain_move_timeout <= 0:
            raise ValueError("drain-move-timeout must be positive")
        if self.drain_timeout < (
            self.drain_grace + self.drain_window + self.drain_move_timeout
        ):
            raise ValueError(
                "drain-timeout must be at least drain-grace + drain-window + "
                "drain-move-timeout"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> NodeConfig:
        """Build from a mapping of field names; unknown names are an error."""
        known = {f.name: f for f in fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
        config = cls()
        for name, value in values.items():
            if value is None:
                continue
            kind = type(getattr(config, name))
            setattr(config, name, kind(value))
        return config

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> NodeConfig:
        """Build from a JSON file and ``WSHA_<FIELD>`` variables (which win).

        ``WSHA_CONFIG_FILE`` names the optional file, an object of field names
        (``{"kafka": "127.0.0.1:9092", "node_id": "n1"}``).
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        path = environ.get("WSHA_CONFIG_FILE")
        if path:
            with open(path, encoding="utf-8") as config_file:
                loaded = json.load(config_file)
            if not isinstance(loaded, dict):
                raise ValueError(f"{path}: the config file must hold a JSON object")
            values.update(loaded)
        for setting in fields(cls):
            name = f"WSHA_{setting.name.upper()}"
            if name in environ:
                values[setting.name] = environ[name]
        return cls.from_mapping(values)
