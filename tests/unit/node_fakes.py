"""In-memory fakes of the node registry's collaborators, for unit tests.

:class:`FakeNodeStore` keeps the registry's state in dicts and answers with
Deferreds that have already fired, following the same rules as the Lua
scripts (which tests/integration/test_node_store.py checks on real Redis), so
that a test can run several reapers against one store and look at the result.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed

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
)
from wsha.services.redis_service import RedisUnavailable
from wsha.sessions import index_entry


def node_record(node_id: str, state: str = "ready") -> NodeRecord:
    """A registration of ``node_id`` with made-up URLs."""
    return NodeRecord(
        node_id, f"ws://{node_id}/ws", f"http://{node_id}", "0", state, 0, 0, 0
    )


class FakeNodeStore:
    """A NodeStore on dicts; set ``down`` to make every call fail as Redis would."""

    def __init__(self) -> None:
        self.registered: dict[str, NodeRecord] = {}
        self.known: set[str] = set()
        self.index: dict[str, set[str]] = {}
        self.orphan_sets: dict[str, set[str]] = {}
        self.locks: dict[str, str] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.retired: dict[str, float] = {}
        self.heartbeats: list[tuple[NodeRecord, int, bool]] = []
        self.deregistered: list[str] = []
        self.down = False

    def _answer(self, value: Any) -> Deferred[Any]:
        if self.down:
            return fail(RedisUnavailable("Redis is down"))
        return succeed(value)

    # Test helpers

    def add_node(self, node_id: str, *entries: str) -> None:
        """Register ``node_id`` with session index ``entries``."""
        self.registered[node_id] = node_record(node_id)
        self.known.add(node_id)
        self.index.setdefault(node_id, set()).update(entries)

    def expire(self, node_id: str) -> None:
        """Let ``node_id``'s registration expire, as if it died."""
        self.registered.pop(node_id, None)

    # Registration

    def heartbeat(self, record: NodeRecord, ttl_ms: int, first: bool) -> Deferred[Any]:
        """Follow heartbeat.lua."""
        if self.down:
            return fail(RedisUnavailable("Redis is down"))
        self.heartbeats.append((record, ttl_ms, first))
        node_id = record.id
        existed = node_id in self.registered
        self.registered[node_id] = record
        self.known.add(node_id)
        if first:
            self.records.pop(node_id, None)
            outcome = FIRST
        elif existed:
            outcome = RENEWED
        else:
            outcome = REAPED if self.records.pop(node_id, None) else RESTORED
        if outcome != RENEWED:
            self.retired.pop(node_id, None)
        return succeed(outcome)

    def deregister(self, node_id: str, retire_at: float) -> Deferred[Any]:
        """Drop the registration and retire the topic."""
        self.deregistered.append(node_id)
        self.registered.pop(node_id, None)
        return self.forget(node_id, retire_at)

    def known_nodes(self) -> Deferred[Any]:
        """The known node ids, sorted."""
        return self._answer(sorted(self.known))

    def registrations(self, node_ids: list[str]) -> Deferred[Any]:
        """Each node's record, or None."""
        return self._answer({n: self.registered.get(n) for n in node_ids})

    def is_registered(self, node_id: str) -> Deferred[Any]:
        """Whether the registration exists."""
        return self._answer(node_id in self.registered)

    # Cleanup

    def begin_cleanup(
        self, node_id: str, token: str, lease_ms: int, reaper: str, own: bool
    ) -> Deferred[Any]:
        """Follow cleanup_begin.lua."""
        if self.down:
            return fail(RedisUnavailable("Redis is down"))
        record = self.records.get(node_id)
        if not own and node_id in self.registered:
            return succeed(ALIVE)
        if not own and record is not None and record["state"] == "done":
            return succeed(DONE)
        if node_id in self.locks:
            return succeed(BUSY)
        self.locks[node_id] = token
        self.orphan_sets.setdefault(node_id, set()).update(
            self.index.pop(node_id, set())
        )
        if not own:
            record = self.records.setdefault(node_id, {"runs": 0, "sessions": 0})
            record.update(state="cleaning", by=reaper)
            record["runs"] += 1
        return succeed(LOCKED)

    def orphans(self, node_id: str, cursor: str, count: int) -> Deferred[Any]:
        """All set-aside entries in one batch, sorted."""
        return self._answer(("0", sorted(self.orphan_sets.get(node_id, ()))[:count]))

    def orphans_left(self, node_id: str) -> Deferred[Any]:
        """How many set-aside entries remain."""
        return self._answer(len(self.orphan_sets.get(node_id, ())))

    def cleanup_progress(
        self, node_id: str, token: str, lease_ms: int, handled: list[str]
    ) -> Deferred[Any]:
        """Follow cleanup_step.lua."""
        if self.locks.get(node_id) != token:
            return self._answer(False)
        self.orphan_sets[node_id].difference_update(handled)
        return self._answer(True)

    def end_cleanup(
        self, node_id: str, token: str, sessions: int, own: bool
    ) -> Deferred[Any]:
        """Follow cleanup_end.lua."""
        if self.locks.get(node_id) != token:
            return self._answer(LOST)
        del self.locks[node_id]
        if node_id in self.registered:
            return self._answer(BACK)
        if not own and node_id in self.records:
            self.records[node_id]["state"] = "done"
            self.records[node_id]["sessions"] += sessions
        return self._answer(GONE)

    def forget(self, node_id: str, retire_at: float) -> Deferred[Any]:
        """Drop from the known nodes; retire the topic (unless already due)."""
        self.retired.setdefault(node_id, retire_at)
        self.known.discard(node_id)
        return self._answer(None)

    def due_topics(self, now: float, limit: int) -> Deferred[Any]:
        """Retired topics due by ``now``."""
        due = sorted(n for n, at in self.retired.items() if at <= now)
        return self._answer(due[:limit])

    def take_topic(self, node_id: str) -> Deferred[Any]:
        """Take a retired topic off the list; False if it was not there."""
        return self._answer(self.retired.pop(node_id, None) is not None)

    def retry_topic(self, node_id: str, at: float) -> Deferred[Any]:
        """Put a topic back on the list."""
        self.retired.setdefault(node_id, at)
        return self._answer(None)


class FakeSessions:
    """A SessionRegistry's ``orphan`` step over a dict of session owners."""

    def __init__(self) -> None:
        self.owners: dict[tuple[str, str], tuple[str, str]] = {}
        self.offline: list[tuple[str, str]] = []

    def own(self, node_id: str, user: str, session: str, epoch: int) -> str:
        """Make ``node_id`` the owner at ``epoch``; return the index entry."""
        self.owners[(user, session)] = (node_id, str(epoch))
        return index_entry(user, session, str(epoch))

    def orphan(self, user: str, session: str, node: str, epoch: str) -> Deferred[Any]:
        """Follow orphan.lua: only the owner at that epoch is marked offline."""
        if self.owners.get((user, session)) != (node, epoch):
            return succeed(False)
        self.owners[(user, session)] = ("", epoch)
        self.offline.append((user, session))
        return succeed(True)


class FakeTopics:
    """A TopicRemover that records deletions, or fails while ``failing``."""

    def __init__(self) -> None:
        self.deleted: list[str] = []
        self.failing = False

    def delete_topic(self, node_id: str) -> Deferred[Any]:
        """Record the deletion of ``node_id``'s topic."""
        if self.failing:
            return fail(RuntimeError("broker unreachable"))
        self.deleted.append(node_id)
        return succeed(None)
