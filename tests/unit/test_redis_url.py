"""Unit tests for :mod:`wsha.services.redis_url`: the ``--redis`` URL forms."""

from __future__ import annotations

import pytest

from wsha.services.redis_url import RedisAddress, SentinelAddress, parse_redis_url


def test_redis_url() -> None:
    """A redis:// URL gives host, port, database and credentials."""
    address = parse_redis_url("redis://u:p%40ss@cache.local:6380/3")
    assert address == RedisAddress("cache.local", 6380, 3, "u", "p@ss")
    assert address.describe() == "cache.local:6380/3"


def test_redis_url_defaults() -> None:
    """Port 6379 and database 0 when the URL leaves them out."""
    assert parse_redis_url("redis://127.0.0.1") == RedisAddress(
        "127.0.0.1", 6379, 0, None, None
    )


def test_sentinel_url() -> None:
    """A sentinel:// URL lists the Sentinels, the master's name and the database."""
    address = parse_redis_url(
        "sentinel://:secret@127.0.0.1:26379,127.0.0.1:26380,s3/mymaster/2"
    )
    assert address == SentinelAddress(
        sentinels=(("127.0.0.1", 26379), ("127.0.0.1", 26380), ("s3", 26379)),
        master="mymaster",
        db=2,
        username=None,
        password="secret",
    )
    assert "secret" not in address.describe()


def test_sentinel_url_database_defaults_to_zero() -> None:
    """``/<master-name>`` alone means database 0."""
    address = parse_redis_url("sentinel://127.0.0.1:26379/wsha")
    assert isinstance(address, SentinelAddress)
    assert (address.master, address.db) == ("wsha", 0)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:6379/0",
        "redis:///0",
        "redis://127.0.0.1/zero",
        "sentinel://127.0.0.1:26379",
        "sentinel://127.0.0.1:26379/",
        "sentinel://127.0.0.1:port/m/0",
        "sentinel://127.0.0.1:26379,/m/0",
        "sentinel://127.0.0.1:26379/m/0/extra",
        "sentinel://127.0.0.1:26379/m/x",
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    """Anything but the two documented forms is a ValueError."""
    with pytest.raises(ValueError):
        parse_redis_url(url)
