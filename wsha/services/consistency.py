"""ConsistencyChecker: finds and repairs drift in the cluster's shared state.

Every step that spans two Redis slots (a group's keys and a user's keys, a
user's keys and a node's index) can be cut half-way by a crash or an outage.
The checker runs periodically and repairs what such cuts leave behind:

- Pub/Sub subscriptions of this node without a local member (every node);
- group members whose session no longer exists or is no longer subscribed;
- presence entries and online sessions held by nodes that are gone;
- presence entries of connections that ended without leaving (Redis failed it).

The cluster-wide part runs on one node at a time, under a lock. Each repair is
counted in ``wsha_consistency_repairs_total{kind}`` and logged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from wsha import keys, metrics
from wsha.groups import GroupStore, PresenceEntry, flat_pairs, split_member
from wsha.nodes import NodeStore
from wsha.services.group_fanout import GroupFanout
from wsha.sessions import SessionRegistry

SCAN_BATCH = 500
"""Keys or members asked for per round trip."""

_ONLINE_HEAD, _ONLINE_TAIL = keys.online("\0").split("\0")


class ConsistencyChecker(service.Service):
    """Runs the checks every ``interval`` seconds; a check never overlaps another.

    :param clock: schedules the checks.
    :param node_id: this node (the lock's holder).
    :param redis: the node's Redis service.
    :param nodes: the node registry (who is alive).
    :param groups: the group store.
    :param sessions: the session registry (fenced offline marking).
    :param fanout: this node's Pub/Sub link.
    :param is_live: this node's view of which nodes are alive.
    :param interval: seconds between checks; 0 disables them.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        node_id: str,
        redis: Any,
        nodes: NodeStore,
        groups: GroupStore,
        sessions: SessionRegistry,
        fanout: GroupFanout,
        is_live: Callable[[str], bool],
        interval: float,
    ):
        self.node_id = node_id
        self._redis = redis
        self._nodes = nodes
        self._groups = groups
        self._sessions = sessions
        self._fanout = fanout
        self._is_live = is_live
        self.interval = interval
        self._loop = LoopingCall(self._run)
        self._loop.clock = clock
        self._running: Deferred[Any] | None = None

    def startService(self) -> None:
        """Start checking (the first check one interval from now)."""
        super().startService()
        if self.interval > 0:
            self._loop.start(self.interval, now=False)

    def stopService(self) -> Deferred[Any] | None:
        """Stop checking; fires once a check in progress has ended."""
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        running = self._running
        if running is None:
            return None
        done: Deferred[Any] = Deferred()
        running.addBoth(lambda _: done.callback(None))
        return done

    def _run(self) -> None:
        # A polled function catches its own errors, or the loop dies.
        if self._running is not None:
            return
        d = self.check()
        self._running = d

        def ended(result: Any) -> None:
            self._running = None
            if hasattr(result, "getErrorMessage"):
                self.log.warn(
                    "Consistency check failed; the next one retries: {error}",
                    error=result.getErrorMessage(),
                )

        d.addBoth(ended)

    @inlineCallbacks
    def check(self) -> Any:
        """Run one check: local always, cluster-wide if this node gets the lock.

        Fires with the number of repairs made.
        """
        repairs = self._check_local()
        metrics.CONSISTENCY_CHECKS.labels("local").inc()
        locked = yield self._redis.execute_command(
            "SET",
            keys.consistency_lock(),
            self.node_id,
            "PX",
            int(max(self.interval, 1.0) * 1000),
            "NX",
        )
        if not locked:
            return repairs
        metrics.CONSISTENCY_CHECKS.labels("cluster").inc()
        alive = yield self._alive_nodes()
        repairs += yield self._check_groups(alive)
        repairs += yield self._check_online(alive)
        return repairs

    def _check_local(self) -> int:
        stray = self._fanout.groups_without_members()
        for group in stray:
            self._fanout.repair(group)
            self._repaired("pubsub_without_members", group=group)
        metrics.GROUP_CHANNELS.set(len(self._fanout.subscribed))
        return len(stray)

    @inlineCallbacks
    def _alive_nodes(self) -> Any:
        known = yield self._nodes.known_nodes()
        records = yield self._nodes.registrations(known)
        alive = {n for n, record in records.items() if record is not None}
        # A node listed but expired is the reaper's to clean up, under its
        # lock; only nodes known dead or never listed are taken as gone here.
        return {n for n in known if n not in alive and self._is_live(n)} | alive

    def _gone(self, node: str, alive: set[str]) -> bool:
        return bool(node) and node not in alive

    @inlineCallbacks
    def _check_groups(self, alive: set[str]) -> Any:
        repairs = 0
        cursor = "0"
        while True:
            cursor, groups = yield self._redis.execute_command(
                "SSCAN", keys.known_groups(), cursor, "COUNT", SCAN_BATCH
            )
            for group in groups or ():
                repairs += yield self._check_group(str(group), alive)
            if str(cursor) == "0":
                return repairs

    @inlineCallbacks
    def _check_group(self, group: str, alive: set[str]) -> Any:
        repairs = 0
        present = yield self._groups.presence(group)
        for entry in present:
            if not self._gone(entry.node, alive):
                continue
            left = yield self._groups.leave(
                group, entry.user, entry.session, entry.epoch, entry.node
            )
            if left:
                self._repaired(
                    "presence_on_dead_node",
                    group=group,
                    member=keys.member(entry.user, entry.session),
                    node=entry.node,
                )
                repairs += 1
        busy = set()
        for entry in present:
            if self._gone(entry.node, alive):
                continue
            stale = yield self._connection_ended(entry)
            if stale:
                left = yield self._groups.leave(
                    group, entry.user, entry.session, entry.epoch, entry.node
                )
                if left:
                    self._repaired(
                        "presence_without_connection",
                        group=group,
                        member=keys.member(entry.user, entry.session),
                        node=entry.node,
                    )
                    repairs += 1
                continue
            # A member online on a live node may be half-way through subscribing.
            busy.add(keys.member(entry.user, entry.session))
        members = yield self._groups.members(group)
        for member in members:
            if member in busy:
                continue
            try:
                user, session = split_member(member)
            except ValueError:
                continue
            exists = yield self._redis.execute_command(
                "EXISTS", keys.session(user, session)
            )
            subscribed = yield self._redis.execute_command(
                "HEXISTS", keys.subscriptions(user, session), group
            )
            if int(exists) and int(subscribed):
                continue
            # An unsubscribe cut between its two steps leaves a member without
            # its subscription, which nothing else would ever remove.
            yield self._groups.leave(group, user, session, "", "", end_membership=True)
            kind = (
                "member_without_subscription"
                if int(exists)
                else "member_without_session"
            )
            self._repaired(kind, group=group, member=member)
            repairs += 1
        if not members:
            history = yield self._redis.execute_command(
                "EXISTS", keys.group_history(group)
            )
            if not int(history):
                yield self._redis.execute_command("SREM", keys.known_groups(), group)
        return repairs

    @inlineCallbacks
    def _connection_ended(self, entry: PresenceEntry) -> Any:
        # The connection that joined has ended (its session is offline at that
        # epoch, or gone) but its leave never ran: Redis failed it.
        state = yield self._redis.execute_command(
            "HMGET", keys.session(entry.user, entry.session), "epoch", "online"
        )
        epoch, online = [*list(state or ()), None, None][:2]
        if epoch is None:
            return True
        return str(online) != "1" and str(epoch) == entry.epoch

    @inlineCallbacks
    def _check_online(self, alive: set[str]) -> Any:
        repairs = 0
        cursor = "0"
        pattern = f"{_ONLINE_HEAD}*{_ONLINE_TAIL}"
        while True:
            cursor, found = yield self._redis.execute_command(
                "SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_BATCH
            )
            for key in found or ():
                user = str(key)[len(_ONLINE_HEAD) : -len(_ONLINE_TAIL)]
                repairs += yield self._check_user(user, alive)
            if str(cursor) == "0":
                return repairs

    @inlineCallbacks
    def _check_user(self, user: str, alive: set[str]) -> Any:
        repairs = 0
        online = yield self._redis.execute_command("HGETALL", keys.online(user))
        items = list(online.items()) if isinstance(online, dict) else flat_pairs(online)
        for raw_session, raw_node in items:
            session, node = str(raw_session), str(raw_node)
            if not self._gone(node, alive):
                continue
            epoch = yield self._redis.execute_command(
                "HGET", keys.session(user, session), "epoch"
            )
            if epoch is None:
                # The session's state expired: its online entry is all that is left.
                yield self._redis.execute_command("HDEL", keys.online(user), session)
                marked = True
            else:
                marked = yield self._sessions.orphan(user, session, node, str(epoch))
                if marked:
                    yield self._groups.leave_all(user, session, str(epoch), node)
            if marked:
                self._repaired(
                    "session_on_dead_node", user=user, session=session, node=node
                )
                repairs += 1
        return repairs

    def _repaired(self, kind: str, **where: str) -> None:
        metrics.CONSISTENCY_REPAIRS.labels(kind).inc()
        self.log.info(
            "Consistency: repaired {kind} {where}",
            kind=kind,
            where=" ".join(f"{k}={v}" for k, v in sorted(where.items())),
            repair=kind,
            **where,
        )
