"""NodeRegistryService: keeps this node registered, and reaps nodes that died.

While it runs, the node's registration in Redis (see :mod:`wsha.nodes`) is
renewed every heartbeat interval and expires a TTL after the last one; a
second loop scans for nodes whose registration expired and has the
:class:`~wsha.reaper.DeadNodeReaper` clean up after them. A clean stop marks
this node's remaining sessions offline and deregisters it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from wsha import __version__
from wsha.nodes import REAPED, RESTORED, STARTING, NodeRecord, NodeStore
from wsha.reaper import DeadNodeReaper
from wsha.services.redis_service import RedisUnavailable

Describe = Callable[[], tuple[str, str, int]]
"""Returns this node's (WebSocket URL, control URL, live sessions) right now."""


@dataclass(frozen=True)
class RegistryTiming:
    """How often a node renews its registration and looks for dead nodes.

    :param heartbeat_interval: seconds between heartbeats.
    :param ttl: seconds a registration lives after its last heartbeat.
    :param reaper_interval: seconds between scans for dead nodes.
    """

    heartbeat_interval: float
    ttl: float
    reaper_interval: float


class NodeRegistryService(service.Service):
    """Registers this node with a heartbeat and cleans up after dead nodes.

    :param clock: schedules the heartbeats and scans.
    :param store: the node registry in Redis.
    :param reaper: cleans up after dead nodes (and after this node's own past).
    :param node_id: this node's id.
    :param describe: this node's URLs and connection count, asked each heartbeat.
    :param timing: heartbeat, TTL and scan intervals.
    :param on_reaped: called when a heartbeat finds this node was declared dead
        (its registration expired and a survivor began cleaning up): its
        sessions are being marked offline, so it must close their connections.
    :param version: the version label this node registers (default: the wsha
        version); balancer policies select nodes by it.

    ``state`` is published with each heartbeat (``starting``, ``ready``,
    ``draining``); whoever changes it may call :meth:`beat` to publish at once.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        store: NodeStore,
        reaper: DeadNodeReaper,
        node_id: str,
        describe: Describe,
        timing: RegistryTiming,
        on_reaped: Callable[[], None],
        version: str = __version__,
    ):
        self._clock = clock
        self.version = version
        self.store = store
        self.reaper = reaper
        self.node_id = node_id
        self._describe = describe
        self.timing = timing
        self._on_reaped = on_reaped
        self.state = STARTING
        self.started_at = 0
        self.registered = False
        self._healthy_since: float | None = None
        self._last_beat = 0.0
        self._loops: list[tuple[LoopingCall, Deferred[Any]]] = []

    @inlineCallbacks
    def startService(self) -> Any:
        """Register (after cleaning up an earlier process's sessions), then loop.

        A Redis that does not answer yet does not stop the node from starting:
        the heartbeat loop registers it once Redis is back.
        """
        service.Service.startService(self)
        self.started_at = int(self._clock.seconds() * 1000)
        yield self.beat()
        self._loops = [
            self._every(self.timing.heartbeat_interval, self.beat),
            self._every(self.timing.reaper_interval, self.scan),
        ]

    @inlineCallbacks
    def stopService(self) -> Any:
        """Stop the loops, mark this node's remaining sessions offline, deregister."""
        service.Service.stopService(self)
        loops, self._loops = self._loops, []
        for loop, done in loops:
            if loop.running:
                loop.stop()
            yield done
        if not self.registered:
            return
        try:
            yield self.reaper.clean_up(self.node_id, own=True)
            yield self.store.deregister(
                self.node_id, self._clock.seconds() + self.reaper.topic_delay
            )
        except Exception as e:
            self.log.warn(
                "Node {node} could not deregister ({error}); its registration "
                "expires in {ttl}s and the survivors clean up after it",
                node=self.node_id,
                error=str(e),
                ttl=self.timing.ttl,
            )
            return
        self.registered = False
        self.log.info("Node {node} deregistered", node=self.node_id)

    def record(self) -> NodeRecord:
        """This node's registration as of now."""
        url, control_url, connections = self._describe()
        return NodeRecord(
            id=self.node_id,
            url=url,
            control_url=control_url,
            version=self.version,
            state=self.state,
            connections=connections,
            started_at=self.started_at,
            heartbeat_at=int(self._clock.seconds() * 1000),
        )

    def healthy_for(self) -> float:
        """Seconds this node's heartbeats have worked without a break (0 if not now).

        A break is a failed heartbeat or more than a TTL since the last one that
        worked (a frozen process: its view of the others is a TTL old).
        """
        now = self._clock.seconds()
        if self._healthy_since is None or now - self._last_beat > self.timing.ttl:
            return 0.0
        return now - self._healthy_since

    @inlineCallbacks
    def beat(self) -> Any:
        """Renew the registration once; logs its own errors (a polled step).

        The first successful beat of a process registers it afresh, after
        marking offline any session an earlier process with this id left.
        """
        first = not self.registered
        try:
            if first:
                yield self.reaper.clean_up(self.node_id, own=True)
            outcome = yield self.store.heartbeat(
                self.record(), int(self.timing.ttl * 1000), first
            )
        except Exception as e:
            self._healthy_since = None
            # A Redis outage is logged once by the Redis service; not every beat.
            emit = self.log.debug if isinstance(e, RedisUnavailable) else self.log.warn
            emit("Heartbeat of {node} failed: {error}", node=self.node_id, error=str(e))
            return
        self.registered = True
        now = self._clock.seconds()
        if self._healthy_since is None or now - self._last_beat > self.timing.ttl:
            self._healthy_since = now
        self._last_beat = now
        if first:
            self.log.info("Node {node} registered", node=self.node_id)
        elif outcome == REAPED:
            self.log.warn(
                "Node {node} was declared dead (no heartbeat for {ttl}s); closing "
                "its connections so that their sessions reconnect",
                node=self.node_id,
                ttl=self.timing.ttl,
            )
            self._reaped()
        elif outcome == RESTORED:
            self.log.warn(
                "Registration of {node} had expired; renewed before any cleanup",
                node=self.node_id,
            )

    def _reaped(self) -> None:
        try:
            self._on_reaped()
        except Exception:
            self.log.failure("Closing the connections of a reaped node failed")

    @inlineCallbacks
    def scan(self) -> Any:
        """Look for dead nodes once and clean up; logs its own errors."""
        try:
            yield self.reaper.scan(may_reap=self.healthy_for() >= self.timing.ttl)
        except Exception as e:
            emit = self.log.debug if isinstance(e, RedisUnavailable) else self.log.warn
            emit("Scan for dead nodes failed: {error}", error=str(e))

    @inlineCallbacks
    def listing(self) -> Any:
        """Fire with the registered nodes and those known dead, as JSON values."""
        known = yield self.store.known_nodes()
        records = yield self.store.registrations(known)
        alive = [asdict(r) for _, r in sorted(records.items()) if r is not None]
        expired = {n for n, record in records.items() if record is None}
        dead = (expired | set(self.reaper.liveness.dead())) - {r["id"] for r in alive}
        return {"node": self.node_id, "nodes": alive, "dead": sorted(dead)}

    def _every(
        self, interval: float, step: Callable[[], Any]
    ) -> tuple[LoopingCall, Deferred[Any]]:
        loop = LoopingCall(step)
        loop.clock = self._clock
        done = loop.start(interval, now=False)
        done.addErrback(lambda reason: self.log.failure("Registry loop died", reason))
        return loop, done
