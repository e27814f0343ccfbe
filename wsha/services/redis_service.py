"""RedisService: the node's connection to Redis, with reconnects and timeouts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

import txredisapi
from twisted.application import service
from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger


@dataclass(frozen=True)
class RedisAddress:
    """Where Redis is, parsed from a ``redis://[user:password@]host:port/db`` URL."""

    host: str
    port: int
    db: int
    username: str | None
    password: str | None

    @classmethod
    def from_url(cls, url: str) -> RedisAddress:
        """Parse ``url``; raises ValueError for anything but a redis:// URL."""
        parsed = urlparse(url)
        if parsed.scheme != "redis" or not parsed.hostname:
            raise ValueError(f"not a redis:// URL: {url!r}")
        path = parsed.path.strip("/")
        return cls(
            host=parsed.hostname,
            port=parsed.port or 6379,
            db=int(path) if path else 0,
            username=unquote(parsed.username) if parsed.username else None,
            password=unquote(parsed.password) if parsed.password else None,
        )


class RedisUnavailable(Exception):
    """Redis cannot be reached now; the caller may retry later."""


class RedisService(service.Service):
    """Holds one pipelined Redis connection for the node.

    All of the node's commands share one connection on purpose: Redis runs the
    commands of one connection in the order they were sent, which keeps a
    client's sends in order without waiting for each reply.

    :param address: the Redis server.
    :param timeout: seconds to wait for a connection or a reply.
    """

    log = Logger()

    def __init__(self, address: RedisAddress, timeout: float = 5.0):
        self.address = address
        self.timeout = timeout
        self.connection: Any = None

    @inlineCallbacks
    def startService(self) -> Any:
        """Connect (and keep reconnecting); fires once the first connection is up."""
        service.Service.startService(self)
        address = self.address
        self.connection = yield txredisapi.Connection(
            host=address.host,
            port=address.port,
            dbid=address.db,
            password=address.password,
            username=address.username,
            reconnect=True,
            connectTimeout=self.timeout,
            replyTimeout=self.timeout,
            convertNumbers=False,
        )
        self.log.info(
            "Connected to Redis at {host}:{port}", host=address.host, port=address.port
        )

    @inlineCallbacks
    def stopService(self) -> Any:
        """Close the connection."""
        service.Service.stopService(self)
        if self.connection is not None:
            yield self.connection.disconnect()

    def eval(
        self, script: str, keys: Sequence[str] = (), args: Sequence[Any] = ()
    ) -> Any:
        """Run a Lua script on the current connection (see :class:`RedisCommands`)."""
        return self._current().eval(script, list(keys), list(args))

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        """Run a command on the current connection (see :class:`RedisCommands`)."""
        return self._current().execute_command(*args, **kwargs)

    def _current(self) -> Any:
        if self.connection is None:
            raise RedisUnavailable("not connected to Redis yet")
        return self.connection

    @inlineCallbacks
    def is_healthy(self) -> Any:
        """Fire True if Redis answers a PING within the timeout."""
        if self.connection is None:
            return False
        try:
            reply = yield self.connection.ping()
        except Exception:
            return False
        return reply == "PONG"
