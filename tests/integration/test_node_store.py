"""The node registry's scripts on real Redis: heartbeats, the cleanup lock, and
the fenced per-session step.

They run in a database of their own on the shared Redis, so that no running
node's reaper (they scan database 0) ever sees these made-up nodes.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import urlparse

import pytest
import pytest_twisted
import txredisapi
from twisted.internet import defer

from tests.integration.conftest import Services
from tests.integration.support import wait_for
from wsha import keys
from wsha.nodes import (
    ALIVE,
    BACK,
    BUSY,
    DONE,
    FIRST,
    GONE,
    LOCKED,
    LOST,
    REAPED,
    RENEWED,
    RESTORED,
    NodeRecord,
    NodeStore,
)
from wsha.sessions import SessionRegistry, index_entry

DATABASE = 13
"""The Redis database these tests use (nodes use 0; other tests, others)."""


@pytest.fixture
def redis_address(services: Services) -> tuple[str, int]:
    """Host and port of the shared Redis."""
    parsed = urlparse(services.redis_url)
    return parsed.hostname or "127.0.0.1", parsed.port or 6379


@defer.inlineCallbacks
def connect(address: tuple[str, int], database: int = DATABASE) -> Any:
    """A txredisapi connection to ``database`` (this module's by default)."""
    connection = yield txredisapi.Connection(
        address[0], address[1], dbid=database, reconnect=False, convertNumbers=False
    )
    return connection


def fresh(name: str) -> str:
    """A node or user id no other test uses."""
    return f"{name}-{secrets.token_hex(4)}"


def record(node_id: str) -> NodeRecord:
    """A registration of ``node_id``."""
    return NodeRecord(node_id, "ws://x/ws", "http://x", "0", "ready", 0, 1, 2)


@defer.inlineCallbacks
def remove(redis: Any, *node_ids: str) -> Any:
    """Delete every key of ``node_ids`` from this module's database."""
    for node_id in node_ids:
        yield redis.execute_command(
            "DEL",
            keys.node(node_id),
            keys.node_sessions(node_id),
            keys.node_orphans(node_id),
            keys.node_cleanup_lock(node_id),
            keys.node_cleanup(node_id),
        )
        yield redis.execute_command("SREM", keys.known_nodes(), node_id)
        yield redis.execute_command("ZREM", keys.retired_topics(), node_id)


@pytest_twisted.inlineCallbacks
def test_heartbeat_says_whether_the_node_was_reaped(
    redis_address: tuple[str, int],
) -> Any:
    """A heartbeat renews with a TTL; after an expiry it restores the node, or
    says "reaped" once if a cleanup began meanwhile; a first registration
    forgets an earlier cleanup."""
    redis = yield connect(redis_address)
    store = NodeStore(redis)
    node = fresh("n")
    try:
        assert (yield store.heartbeat(record(node), 5_000, True)) == FIRST
        assert (yield store.heartbeat(record(node), 5_000, False)) == RENEWED
        ttl = yield redis.execute_command("PTTL", keys.node(node))
        assert 0 < int(ttl) <= 5_000
        assert (yield store.known_nodes()).count(node) == 1
        assert (yield store.registrations([node])) == {node: record(node)}

        yield redis.execute_command("DEL", keys.node(node))
        assert (yield store.heartbeat(record(node), 5_000, False)) == RESTORED

        yield redis.execute_command("DEL", keys.node(node))
        began = yield store.begin_cleanup(node, "t", 5_000, "reaper", False)
        assert began == LOCKED
        assert (yield store.heartbeat(record(node), 5_000, False)) == REAPED
        assert (yield store.heartbeat(record(node), 5_000, False)) == RENEWED

        yield redis.execute_command("HSET", keys.node_cleanup(node), "state", "done")
        assert (yield store.heartbeat(record(node), 5_000, True)) == FIRST
        assert (yield store.cleanup_record(node)) == {}
    finally:
        yield remove(redis, node)
        yield redis.disconnect()


@pytest_twisted.inlineCallbacks
def test_registration_expires_without_heartbeats(
    redis_address: tuple[str, int],
) -> Any:
    """A registration with a short TTL is gone after it, by Redis's own clock."""
    redis = yield connect(redis_address)
    store = NodeStore(redis)
    node = fresh("n")
    try:
        yield store.heartbeat(record(node), 150, True)
        yield wait_for(
            lambda: store.registrations([node]).addCallback(lambda r: r[node] is None),
            5,
            "the registration to expire",
        )
        assert node in (yield store.known_nodes())
    finally:
        yield remove(redis, node)
        yield redis.disconnect()


@pytest_twisted.inlineCallbacks
def test_cleanup_lock_admits_one_reaper_once(redis_address: tuple[str, int]) -> Any:
    """Cleanup begins only for an expired node, for one reaper at a time; it sets
    the index aside in the same step; once done, nobody begins it again."""
    redis = yield connect(redis_address)
    store = NodeStore(redis)
    node = fresh("n")
    entry = index_entry("u", "phone", "5")
    try:
        yield store.heartbeat(record(node), 5_000, True)
        yield redis.execute_command("SADD", keys.node_sessions(node), entry)
        assert (yield store.begin_cleanup(node, "a", 5_000, "r1", False)) == ALIVE

        yield redis.execute_command("DEL", keys.node(node))
        assert (yield store.begin_cleanup(node, "a", 5_000, "r1", False)) == LOCKED
        assert (yield store.begin_cleanup(node, "b", 5_000, "r2", False)) == BUSY
        assert (yield store.orphans(node, "0", 10)) == ("0", [entry])
        exists = yield redis.execute_command("EXISTS", keys.node_sessions(node))
        assert int(exists) == 0

        assert (yield store.cleanup_progress(node, "b", 5_000, [entry])) is False
        assert (yield store.cleanup_progress(node, "a", 5_000, [entry])) is True
        assert (yield store.orphans_left(node)) == 0
        assert (yield store.end_cleanup(node, "b", 1, False)) == LOST
        assert (yield store.end_cleanup(node, "a", 1, False)) == GONE
        assert (yield store.cleanup_record(node)) == {
            "state": "done",
            "by": "r1",
            "runs": "1",
            "sessions": "1",
        }
        assert (yield store.begin_cleanup(node, "c", 5_000, "r2", False)) == DONE
    finally:
        yield remove(redis, node)
        yield redis.disconnect()


@pytest_twisted.inlineCallbacks
def test_expired_lease_lets_another_reaper_finish(
    redis_address: tuple[str, int],
) -> Any:
    """A reaper that stops renewing its lease loses the lock; the next one takes
    it over with the entries not handled yet, and the first one's late steps
    change nothing."""
    redis = yield connect(redis_address)
    store = NodeStore(redis)
    node = fresh("n")
    first, second = index_entry("u", "a", "5"), index_entry("u", "b", "5")
    try:
        yield redis.execute_command("SADD", keys.node_sessions(node), first, second)
        yield redis.execute_command("SADD", keys.known_nodes(), node)
        assert (yield store.begin_cleanup(node, "slow", 200, "r1", False)) == LOCKED
        assert (yield store.cleanup_progress(node, "slow", 200, [first])) is True
        yield wait_for(
            lambda: store.begin_cleanup(node, "next", 5_000, "r2", False).addCallback(
                lambda began: began == LOCKED
            ),
            5,
            "the lease to run out",
        )
        assert (yield store.orphans(node, "0", 10)) == ("0", [second])
        assert (yield store.cleanup_progress(node, "slow", 200, [second])) is False
        assert (yield store.end_cleanup(node, "slow", 1, False)) == LOST
        assert (yield store.end_cleanup(node, "next", 1, False)) == GONE
        assert (yield store.cleanup_record(node))["runs"] == "2"
    finally:
        yield remove(redis, node)
        yield redis.disconnect()


@pytest_twisted.inlineCallbacks
def test_node_back_during_cleanup_is_not_marked_done(
    redis_address: tuple[str, int],
) -> Any:
    """A node that registers again while a reaper cleans up is "back" at the end,
    and its new index entries stay out of the set-aside ones."""
    redis = yield connect(redis_address)
    store = NodeStore(redis)
    node = fresh("n")
    old, new = index_entry("u", "a", "5"), index_entry("u", "a", "9")
    try:
        yield redis.execute_command("SADD", keys.node_sessions(node), old)
        assert (yield store.begin_cleanup(node, "t", 5_000, "r", False)) == LOCKED
        assert (yield store.heartbeat(record(node), 5_000, False)) == REAPED
        yield redis.execute_command("SADD", keys.node_sessions(node), new)

        assert (yield store.orphans(node, "0", 10)) == ("0", [old])
        assert (yield store.end_cleanup(node, "t", 0, False)) == BACK
        assert (yield store.cleanup_record(node)) == {}
        index = yield redis.execute_command("SMEMBERS", keys.node_sessions(node))
        assert list(index) == [new]
    finally:
        yield remove(redis, node)
        yield redis.disconnect()


@pytest_twisted.inlineCallbacks
def test_orphan_step_is_fenced_by_node_and_epoch(
    redis_address: tuple[str, int],
) -> Any:
    """Claims enter their node's index and releases leave it; the orphan step
    marks a session offline only for the node and epoch that still own it."""
    redis = yield connect(redis_address)
    dead, live, user = fresh("dead"), fresh("live"), fresh("u")
    on_dead = SessionRegistry(redis, 600, node_id=dead)
    on_live = SessionRegistry(redis, 600, node_id=live)
    user_keys = [keys.sessions(user), keys.online(user)] + [
        keys.session(user, s) for s in ("moved", "stays", "gone")
    ]
    try:
        moved = yield on_dead.claim(user, "moved", dead, None)
        stays = yield on_dead.claim(user, "stays", dead, None)
        gone = yield on_dead.claim(user, "gone", dead, None)
        yield on_dead.release(user, "gone", gone.epoch)
        newer = yield on_live.claim(user, "moved", live, None)
        index = yield redis.execute_command("SMEMBERS", keys.node_sessions(dead))
        assert sorted(index) == sorted(
            [
                index_entry(user, "moved", moved.epoch),
                index_entry(user, "stays", stays.epoch),
            ]
        )

        assert (yield on_live.orphan(user, "moved", dead, moved.epoch)) is False
        assert (yield on_live.orphan(user, "gone", dead, gone.epoch)) is False
        assert (yield on_live.orphan(user, "stays", live, stays.epoch)) is False
        assert (yield on_live.orphan(user, "stays", dead, stays.epoch)) is True

        found = {s.session: s for s in (yield on_live.lookup(user))}
        assert (found["moved"].online, found["moved"].node) == (True, live)
        assert found["moved"].epoch == newer.epoch
        assert (found["stays"].online, found["stays"].node) == (False, "")
        online = yield redis.execute_command("HGETALL", keys.online(user))
        assert dict(zip(online[::2], online[1::2], strict=True)) == {"moved": live}
    finally:
        yield redis.execute_command("DEL", *user_keys)
        yield remove(redis, dead, live)
        yield redis.disconnect()
