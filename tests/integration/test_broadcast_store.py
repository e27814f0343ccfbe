"""The broadcast scripts on real Redis: store once, the id before, exact trimming,
and the session cursor fenced by epoch.

Every key lives under a channel (topic) and users of each test's own, removed
afterwards, so the shared database is left as it was.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest
import pytest_twisted
import txredisapi

from tests.integration.conftest import Services
from wsha import keys
from wsha.broadcast.entry import EVERYONE, Audience
from wsha.broadcast.store import BroadcastStore, HistoryHead


@pytest.fixture
def names() -> Iterator[tuple[str, str]]:
    """A broadcast topic and a user no other test uses."""
    yield f"wsha.broadcast.st-{secrets.token_hex(4)}", f"u-{secrets.token_hex(4)}"


@pytest_twisted.async_yield_fixture
async def redis(services: Services, names: tuple[str, str]) -> Any:
    """A txredisapi connection to the shared Redis; this test's keys go after."""
    address = urlparse(services.redis_url)
    connection = await txredisapi.Connection(
        address.hostname, address.port, reconnect=False, convertNumbers=False
    )
    yield connection
    topic, user = names
    for pattern in (f"wsha:{{b:{topic}}}:*", f"wsha:{{u:{user}}}:*"):
        found = await connection.keys(pattern)
        if found:
            await connection.delete(found)
    await connection.disconnect()


def store(redis: Any, topic: str, max_length: int = 3) -> BroadcastStore:
    """A store of ``topic`` keeping ``max_length`` broadcasts."""
    return BroadcastStore(redis, topic, max_length, dedupe_ttl=60, session_ttl=120)


@pytest_twisted.inlineCallbacks
def test_append_returns_the_id_before_and_stores_once(
    redis: Any, names: tuple[str, str]
) -> Any:
    """Each broadcast names the id before it (0-0 for the first); a retry of
    one (same sender and id) answers with it and stores nothing."""
    topic, _ = names
    history = store(redis, topic)
    first = yield history.append("ops", "a", '"one"', EVERYONE, 1)
    second = yield history.append("ops", "b", '"two"', Audience("tag", "x"), 2)
    again = yield history.append("ops", "a", '"other"', EVERYONE, 3)
    other_sender = yield history.append("bot", "a", '"three"', EVERYONE, 4)

    assert (first.prev, first.duplicate) == ("0-0", False)
    assert (second.prev, second.duplicate) == (first.id, False)
    assert (again.id, again.prev, again.duplicate) == (first.id, "0-0", True)
    assert again.entry is not None and again.entry.body_json == '"one"'
    assert other_sender.prev == second.id and not other_sender.duplicate

    entries = yield history.read_after("0-0", 10)
    assert [(e.id, e.sender, e.body_json, e.ts) for e in entries] == [
        (first.id, "ops", '"one"', 1),
        (second.id, "ops", '"two"', 2),
        (other_sender.id, "bot", '"three"', 4),
    ]
    assert entries[1].audience == Audience("tag", "x")
    later = yield history.read_after(first.id, 1)
    assert [e.id for e in later] == [second.id]


@pytest_twisted.inlineCallbacks
def test_history_is_trimmed_exactly_and_remembers_the_cut(
    redis: Any, names: tuple[str, str]
) -> Any:
    """The history keeps exactly ``max_length`` entries; the head names the
    newest and the newest trimmed away; a retry of a trimmed one has no entry."""
    topic, _ = names
    history = store(redis, topic, max_length=3)
    empty = yield history.head()
    assert empty == HistoryHead("0-0", "0-0")

    stored = []
    for i in range(5):
        result = yield history.append("ops", f"m{i}", str(i), EVERYONE, i)
        stored.append(result.id)

    length = yield redis.execute_command("XLEN", keys.broadcast_history(topic))
    head = yield history.head()
    assert int(length) == 3
    assert head == HistoryHead(stored[4], stored[1])
    retry = yield history.append("ops", "m0", "0", EVERYONE, 9)
    assert (retry.id, retry.duplicate, retry.entry) == (stored[0], True, None)


@pytest_twisted.inlineCallbacks
def test_session_cursor_is_set_once_and_moved_by_the_owner_only(
    redis: Any, names: tuple[str, str]
) -> Any:
    """The first resume stores its starting point; acks move the cursor forward
    for the newest epoch only, never back, and renew the session's keys."""
    topic, user = names
    history = store(redis, topic)
    session = keys.session(user, "phone")
    yield redis.execute_command("HSET", session, "epoch", "5")

    start = yield history.resume_point(user, "phone", "5", "10-0")
    again = yield history.resume_point(user, "phone", "5", "20-0")
    stale = yield history.resume_point(user, "phone", "4", "30-0")
    assert (start, again, stale) == ("10-0", "10-0", "30-0")

    moved = yield history.acknowledge(user, "phone", "5", "12-0")
    back = yield history.acknowledge(user, "phone", "5", "11-0")
    fenced = yield history.acknowledge(user, "phone", "4", "99-0")
    cursor = yield redis.execute_command("HGET", session, "bcast")
    ttl = yield redis.execute_command("TTL", session)
    assert (moved, back, fenced, cursor) == (True, False, False, "12-0")
    assert 0 < int(ttl) <= 120

    resumed = yield history.resume_point(user, "phone", "5", "0-0")
    assert resumed == "12-0"
    inbox_cursor = yield redis.execute_command("HGET", session, "cursor")
    assert inbox_cursor is None


@pytest_twisted.inlineCallbacks
def test_channels_do_not_share_a_history(redis: Any, names: tuple[str, str]) -> Any:
    """Two broadcast topics have separate histories in one Redis."""
    topic, _ = names
    ours = store(redis, topic)
    theirs = store(redis, topic + ".other")
    yield ours.append("ops", "a", "1", EVERYONE, 1)
    other = yield theirs.read_after("0-0", 10)
    assert other == []
