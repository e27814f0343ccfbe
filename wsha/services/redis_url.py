"""Where Redis is: the ``--redis`` URL forms a node understands.

``redis://[user:password@]host:port/db`` names one server;
``sentinel://[user:password@]host:port[,host:port...]/<master-name>/<db>`` names
a set of Sentinels and the master they watch, which the node follows through
failovers. Credentials are the data server's; the Sentinels themselves are
reached without a password.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlparse

DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379


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
            port=parsed.port or DEFAULT_PORT,
            db=_db_number(path, url),
            username=unquote(parsed.username) if parsed.username else None,
            password=unquote(parsed.password) if parsed.password else None,
        )

    def describe(self) -> str:
        """``host:port/db``, for logs (never the password)."""
        return f"{self.host}:{self.port}/{self.db}"


@dataclass(frozen=True)
class SentinelAddress:
    """A master watched by Sentinels, from a ``sentinel://`` URL.

    :param sentinels: the Sentinels' (host, port) pairs, in the URL's order.
    :param master: the name the Sentinels know the master by.
    """

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int
    username: str | None
    password: str | None

    @classmethod
    def from_url(cls, url: str) -> SentinelAddress:
        """Parse ``url``; raises ValueError naming what is wrong with it."""
        scheme, sep, rest = url.partition("://")
        if scheme != "sentinel" or not sep:
            raise ValueError(f"not a sentinel:// URL: {url!r}")
        netloc, _, path = rest.partition("/")
        userinfo, at, hosts = netloc.rpartition("@")
        username = password = None
        if at:
            user, colon, secret = userinfo.partition(":")
            username = unquote(user) if user else None
            password = unquote(secret) if colon else None
        sentinels = tuple(_host_port(item, url) for item in hosts.split(","))
        parts = path.strip("/").split("/")
        if not parts[0]:
            raise ValueError(f"no master name in {url!r}")
        if len(parts) > 2:
            raise ValueError(f"expected /<master-name>/<db> in {url!r}")
        return cls(
            sentinels=sentinels,
            master=unquote(parts[0]),
            db=_db_number(parts[1] if len(parts) == 2 else "", url),
            username=username,
            password=password,
        )

    def describe(self) -> str:
        """``master/db via host:port,...``, for logs (never the password)."""
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        return f"{self.master}/{self.db} via sentinels {hosts}"


def parse_redis_url(url: str) -> RedisAddress | SentinelAddress:
    """Parse a ``redis://`` or ``sentinel://`` URL; raises ValueError otherwise."""
    if url.startswith("sentinel://"):
        return SentinelAddress.from_url(url)
    return RedisAddress.from_url(url)


def _host_port(item: str, url: str) -> tuple[str, int]:
    host, colon, port = item.strip().rpartition(":")
    if not colon:
        host, port = port, str(DEFAULT_SENTINEL_PORT)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad Sentinel address {item!r} in {url!r}")
    return host, int(port)


def _db_number(text: str, url: str) -> int:
    if not text:
        return 0
    if not text.isdigit():
        raise ValueError(f"database must be a number in {url!r}")
    return int(text)
