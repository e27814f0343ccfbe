"""NodeConfig: every setting of a node, from twistd options or the environment."""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any


def generate_node_id() -> str:
    """A node id unique across restarts: host name plus a random suffix."""
    host = socket.gethostname().split(".")[0] or "node"
    return f"{host}-{uuid.uuid4().hex[:8]}"


@dataclass
class NodeConfig:
    """A gateway node's configuration; see ``twistd wsha --help`` for each field."""

    port: str = "tcp:8080:interface=127.0.0.1"
    control_port: str = "tcp:8081:interface=127.0.0.1"
    redis: str = "redis://127.0.0.1:6379/0"
    kafka: str = "127.0.0.1:9092"
    node_id: str = field(default_factory=generate_node_id)
    jwt_secret: str = ""
    jwt_algorithms: str = "HS256"
    jwt_audience: str = ""
    control_token: str = ""
    max_message_bytes: int = 128 * 1024
    max_body_bytes: int = 64 * 1024
    inbox_max_length: int = 10_000
    inbox_ttl: int = 7 * 24 * 3600
    dedupe_ttl: int = 24 * 3600
    session_ttl: int = 7 * 24 * 3600
    redis_timeout: float = 5.0
    ping_interval: float = 20.0
    ping_timeout: float = 10.0

    def check(self) -> None:
        """Raise ValueError naming the first setting that cannot work."""
        if not self.jwt_secret:
            raise ValueError("a JWT key is required (--jwt-secret or WSHA_JWT_SECRET)")
        if self.max_body_bytes >= self.max_message_bytes:
            raise ValueError("max-body-bytes must be below max-message-bytes")
        for name in ("inbox_max_length", "inbox_ttl", "dedupe_ttl", "session_ttl"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.replace('_', '-')} must be positive")
        if self.dedupe_ttl > self.inbox_ttl:
            raise ValueError("dedupe-ttl must not exceed inbox-ttl")

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
            with open(path, encoding="utf-8") as f:
                values.update(json.load(f))
        for f in fields(cls):
            name = f"WSHA_{f.name.upper()}"
            if name in environ:
                values[f.name] = environ[name]
        return cls.from_mapping(values)
