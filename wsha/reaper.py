"""DeadNodeReaper: notices nodes whose registration expired, and cleans up once.

Invariant 5 of the design: a node whose heartbeat is gone is dead; one
survivor, holding that node's cleanup lock, marks offline every session the
dead node still owns (a fenced step per user that leaves alone any session
claimed again since), forgets the node, and deletes its Kafka topic later.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from wsha.nodes import BACK, DONE, GONE, LOCKED, NodeStore, gather_all
from wsha.sessions import SessionRegistry, parse_index_entry

CLEANUP_LEASE = 30.0
"""Seconds a cleanup lock holds without progress before another reaper may take it."""

DEAD_MEMORY = 3600.0
"""Seconds a node stays known as dead after it was last seen dead."""

ORPHAN_BATCH = 200
"""Sessions of a dead node handled per round trip."""

TOPIC_BATCH = 20
"""Dead nodes' topics deleted per scan, at most."""


class TopicRemover(Protocol):
    """What the reaper needs from the Kafka bus: delete a node's topic."""

    def delete_topic(self, node_id: str) -> Deferred[Any]:
        """Delete ``node_id``'s topic; fires once it is gone."""


class NodeLiveness:
    """The nodes this node knows to be dead; every other node counts as live.

    A node not seen yet counts as live, so one that just started is not starved
    of notices before a scan sees it.

    :param clock: time source.
    :param memory: seconds a node stays known as dead after it was last seen so.
    """

    def __init__(self, clock: IReactorTime, memory: float = DEAD_MEMORY):
        self._clock = clock
        self._memory = memory
        self._dead: dict[str, float] = {}

    def is_live(self, node_id: str) -> bool:
        """Say whether ``node_id`` may be sent notices."""
        return node_id not in self._dead

    def dead(self) -> list[str]:
        """The ids of the nodes known to be dead, sorted."""
        return sorted(self._dead)

    def observe(self, alive: Iterable[str], dead: Iterable[str]) -> None:
        """Take in a scan: ``alive`` are registered, ``dead`` have expired."""
        now = self._clock.seconds()
        for node_id in alive:
            self._dead.pop(node_id, None)
        for node_id in dead:
            self._dead[node_id] = now
        for node_id, seen in list(self._dead.items()):
            if now - seen > self._memory:
                del self._dead[node_id]


OrphanHook = Callable[[str, str, str, str], Deferred[Any]]
"""Called with (user, session, epoch, dead node) for each session marked offline."""


class DeadNodeReaper:
    """Cleans up after nodes whose registration expired, once each, under a lock.

    ``on_orphaned``, if set, is called for each session marked offline (its
    groups' presence is taken away there, with leave events).

    :param node_id: this node's id; it never reaps itself while running.
    :param store: the node registry.
    :param sessions: the session registry, for the fenced per-session step.
    :param topics: deletes a dead node's Kafka topic.
    :param clock: time source.
    :param topic_delay: seconds from a node's cleanup to its topic's deletion.
    :param lease: seconds the cleanup lock holds without progress.
    """

    log = Logger()

    def __init__(
        self,
        node_id: str,
        store: NodeStore,
        sessions: SessionRegistry,
        topics: TopicRemover,
        clock: IReactorTime,
        topic_delay: float,
        lease: float = CLEANUP_LEASE,
    ):
        self.node_id = node_id
        self.store = store
        self.sessions = sessions
        self.topics = topics
        self.clock = clock
        self.topic_delay = topic_delay
        self._lease_ms = int(lease * 1000)
        self.liveness = NodeLiveness(clock)
        self.on_orphaned: OrphanHook | None = None

    @inlineCallbacks
    def scan(self, may_reap: bool) -> Any:
        """Look at every known node once; clean up after the dead if ``may_reap``.

        ``may_reap`` stays False until this node's own heartbeats have worked
        for a whole registration TTL: after a Redis outage, the other nodes
        need that long to renew registrations that expired meanwhile.
        """
        known = yield self.store.known_nodes()
        records = yield self.store.registrations(known)
        alive = [n for n, record in records.items() if record is not None]
        expired = [
            n for n, record in records.items() if record is None and n != self.node_id
        ]
        self.liveness.observe(alive, expired if may_reap else ())
        if not may_reap:
            return
        for node_id in expired:
            try:
                yield self.clean_up(node_id)
            except Exception as e:
                self.log.warn(
                    "Cleanup after dead node {node} failed; the next scan retries: "
                    "{error}",
                    node=node_id,
                    error=str(e),
                )
        yield self.delete_due_topics()

    @inlineCallbacks
    def clean_up(self, node_id: str, own: bool = False) -> Any:
        """Mark offline the sessions ``node_id`` still owns, holding its lock.

        Fires with how many sessions were marked offline, or None when there
        was nothing to do: the node is alive, another reaper holds its lock, or
        it was cleaned up already. ``own`` is this node cleaning up what its id
        still holds from an earlier process (at start) or from this one (at stop).
        """
        token = uuid.uuid4().hex
        began = yield self.store.begin_cleanup(
            node_id, token, self._lease_ms, self.node_id, own
        )
        if began == DONE:
            # The reaper that cleaned up may have died before forgetting it.
            yield self._forget(node_id)
            return None
        if began != LOCKED:
            return None

        count = yield self._mark_offline(node_id, token)
        ended = yield self.store.end_cleanup(node_id, token, count, own)

        if own:
            if count:
                self.log.info(
                    "Marked {sessions} sessions left by {node} offline",
                    node=node_id,
                    sessions=count,
                )
        elif ended == GONE:
            self.log.info(
                "Cleaned up after dead node {node}: {sessions} sessions marked offline",
                node=node_id,
                sessions=count,
                cleanup="done",
            )
            self.liveness.observe((), (node_id,))
            yield self._forget(node_id)
        elif ended == BACK:
            self.log.warn(
                "Node {node} registered again during its cleanup; {sessions} of its "
                "sessions were marked offline and it closes their connections",
                node=node_id,
                sessions=count,
            )
        else:
            self.log.warn(
                "Lost the cleanup lock of {node} after {sessions} sessions; the "
                "reaper that took it over finishes",
                node=node_id,
                sessions=count,
            )
        return count

    @inlineCallbacks
    def _mark_offline(self, node_id: str, token: str) -> Any:
        # Entries leave the set only once handled, so a reaper that takes the
        # lock over after this one died goes on where it stopped.
        count = 0
        cursor = "0"
        while True:
            cursor, entries = yield self.store.orphans(node_id, cursor, ORPHAN_BATCH)
            if entries:
                marked = yield gather_all(
                    [self._orphan(node_id, entry) for entry in entries]
                )
                count += sum(marked)
                held = yield self.store.cleanup_progress(
                    node_id, token, self._lease_ms, entries
                )
                if not held:
                    return count
            if cursor == "0":
                left = yield self.store.orphans_left(node_id)
                if not left:
                    return count

    def _orphan(self, node_id: str, entry: str) -> Deferred[int]:
        try:
            user, session, epoch = parse_index_entry(entry)
        except ValueError:
            self.log.warn(
                "Dropping malformed index entry {entry} of {node}",
                entry=entry,
                node=node_id,
            )
            return succeed(0)
        d: Deferred[Any] = self.sessions.orphan(user, session, node_id, epoch)
        return d.addCallback(self._orphaned, user, session, epoch, node_id)

    @inlineCallbacks
    def _orphaned(
        self, marked: bool, user: str, session: str, epoch: str, node_id: str
    ) -> Any:
        if marked and self.on_orphaned is not None:
            try:
                yield self.on_orphaned(user, session, epoch, node_id)
            except Exception as e:
                # Presence of a dead node is hidden anyway; the checker removes it.
                self.log.warn(
                    "Presence of {user}/{session} left by {node} not cleared: {error}",
                    user=user,
                    session=session,
                    node=node_id,
                    error=str(e),
                )
        return int(marked)

    def _forget(self, node_id: str) -> Deferred[Any]:
        d: Deferred[Any] = self.store.forget(
            node_id, self.clock.seconds() + self.topic_delay
        )
        return d

    @inlineCallbacks
    def delete_due_topics(self) -> Any:
        """Delete the Kafka topics of dead nodes whose delay has passed.

        Each topic is taken off the list before it is deleted, so only one
        reaper deletes it; a failed deletion puts it back for later.
        """
        now = self.clock.seconds()
        due = yield self.store.due_topics(now, TOPIC_BATCH)
        for node_id in due:
            if node_id == self.node_id:
                continue
            taken = yield self.store.take_topic(node_id)
            if not taken:
                continue
            registered = yield self.store.is_registered(node_id)
            if registered:
                continue
            try:
                yield self.topics.delete_topic(node_id)
            except Exception as e:
                self.log.warn(
                    "Deleting the topic of dead node {node} failed, retrying later: "
                    "{error}",
                    node=node_id,
                    error=str(e),
                )
                yield self.store.retry_topic(node_id, now + self.topic_delay)
                continue
            self.log.info("Deleted the Kafka topic of dead node {node}", node=node_id)
