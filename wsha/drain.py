"""NodeDrain: how a node leaves without losing or refusing anyone (invariant 6).

A drain runs on SIGTERM (twistd's normal stop) and on ``POST
/v1/admin/drain``, in this order:

1. Readiness fails at once (``/readyz`` answers 503) and the node's
   registration says ``draining``: the balancer stops sending it clients.
2. For ``grace`` seconds nothing else changes, so that the balancer notices
   before anyone is asked to move (a client that still lands here meanwhile
   is served, and told to move like the others). Then new connections are
   refused with 1012.
3. Each session is sent a ``reconnect`` frame at a random moment within
   ``window`` seconds. The client opens a new connection through the
   balancer, which lands on another node; that node's claim of the session
   closes this one with 4001 (make-before-break). A session still here
   ``move_timeout`` seconds after its frame (a client that does not know the
   frame) is closed with 1012: reconnect now, elsewhere.
4. Once no session is left, the sends and publishes still being stored are
   waited for, and the Kafka producer is flushed (in its own threads).
5. The drain's Deferred fires; the node's other parts then stop in reverse
   order as on any stop (listeners, the registry's own cleanup and
   deregistration, Kafka, Redis).

Every wait is bounded: the whole drain ends within ``timeout`` seconds even if
clients never leave or Kafka never answers.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from twisted.application import service
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from wsha import wire
from wsha.client_session import ClientSession
from wsha.inflight import InFlight

CLOSE_REASON = "node draining"


@dataclass(frozen=True)
class DrainTiming:
    """How a drain is paced, in seconds.

    :param grace: from failing readiness to refusing new connections and
        telling the first client to move (the balancer's time to notice).
    :param window: the span over which clients are told to move, at random.
    :param move_timeout: how long a client told to move has before its
        connection is closed with 1012.
    :param timeout: the bound on the whole drain.
    :param flush_timeout: the most spent flushing the Kafka producer.
    :param poll_interval: how often the drain looks for sessions to tell and
        checks whether any is left.
    """

    grace: float
    window: float
    move_timeout: float
    timeout: float
    flush_timeout: float = 5.0
    poll_interval: float = 0.25


class LocalSessions(Protocol):
    """What the drain needs from the gateway: its sessions and unfinished work."""

    local: dict[str, dict[str, ClientSession]]
    in_flight: InFlight

    def connection_count(self) -> int:
        """How many sessions are live on this node."""


class Flushable(Protocol):
    """What the drain needs from the Kafka bus."""

    def flush(self, timeout: float) -> Deferred[int]:
        """Send what is queued within ``timeout``; fires with how many are unsent."""


@dataclass
class DrainReport:
    """What a drain did, for its log line and the tests.

    :param told: sessions sent a ``reconnect`` frame.
    :param closed: sessions closed with 1012 because they had not moved in time.
    :param left: sessions still here when the drain gave up waiting.
    :param unsent: Kafka records not flushed (-1: the flush did not return).
    :param seconds: how long the drain took.
    """

    told: int = 0
    closed: int = 0
    left: int = 0
    unsent: int = 0
    seconds: float = 0.0


class NodeDrain(service.Service):
    """Drains the node when it stops, or earlier on request.

    Added as the node's last child, so that its :meth:`stopService` (the first
    to run when the node stops) drains while every other part still works.

    :param clock: schedules the steps.
    :param node_id: this node's id, for the logs.
    :param gateway: the node's sessions and the work in flight.
    :param producer: the Kafka bus, flushed at the end.
    :param timing: the drain's pacing and bound.
    :param on_draining: called when the drain begins (the node publishes its
        ``draining`` state there).
    :param stop_accepting: called after the grace: refuse new connections.
    :param stop_process: called when a requested drain has finished and nothing
        else is stopping the node (it stops the reactor).
    :param rng: draws each session's moment within the window.
    :param open_connections: how many client connections are open (sessions
        whose claim is still in flight included); the gateway's live sessions
        if not given.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        node_id: str,
        gateway: LocalSessions,
        producer: Flushable,
        timing: DrainTiming,
        on_draining: Callable[[], object],
        stop_accepting: Callable[[], object],
        stop_process: Callable[[], object],
        rng: random.Random | None = None,
        open_connections: Callable[[], int] | None = None,
    ):
        self._clock = clock
        self.node_id = node_id
        self._gateway = gateway
        self._producer = producer
        self.timing = timing
        self._on_draining = on_draining
        self._stop_accepting = stop_accepting
        self._stop_process = stop_process
        self._rng = rng or random.Random()
        self._open_connections = open_connections or gateway.connection_count
        self.draining = False
        self.report: DrainReport | None = None
        self._started_at = 0.0
        self._waiters: list[Deferred[DrainReport]] = []
        self._scheduled: set[ClientSession] = set()
        self._calls: list[IDelayedCall] = []
        self._stop_requested = False
        self._stopping = False

    def stopService(self) -> Deferred[DrainReport]:
        """Drain (or finish the drain under way); fires once drained."""
        self._stopping = True
        service.Service.stopService(self)
        return self.start()

    def start(self) -> Deferred[DrainReport]:
        """Begin the drain unless it has begun; fires with its report once done."""
        waiter: Deferred[DrainReport] = Deferred()
        if self.report is not None:
            waiter.callback(self.report)
            return waiter
        self._waiters.append(waiter)
        if not self.draining:
            self.draining = True
            self._started_at = self._clock.seconds()
            self._run().addBoth(self._finished)
        return waiter

    def request(self, window: float | None = None) -> bool:
        """Drain at an operator's request, then stop the process.

        ``window``, if given, replaces the configured window for this drain
        (the bound grows by as much as the window does). Returns False if a
        drain was under way already: it goes on as it was.
        """
        first = not self.draining
        if first and window is not None:
            longer = max(0.0, window - self.timing.window)
            self.timing = replace(
                self.timing, window=window, timeout=self.timing.timeout + longer
            )
        if not self._stop_requested:
            self._stop_requested = True
            self.start().addCallback(self._stop_when_drained)
        return first

    def _stop_when_drained(self, report: DrainReport) -> None:
        # A node already stopping (SIGTERM during the drain) is left to it.
        if not self._stopping:
            self.log.info("Node {node} drained; stopping", node=self.node_id)
            self._stop_process()

    @inlineCallbacks
    def _run(self) -> Any:
        timing = self.timing
        report = DrainReport()
        deadline = self._started_at + timing.timeout
        self.log.info(
            "Node {node} draining: readiness fails now; {sessions} sessions are "
            "told to move over {window}s after {grace}s",
            node=self.node_id,
            sessions=self._gateway.connection_count(),
            window=timing.window,
            grace=timing.grace,
        )
        self._call_safely(self._on_draining, "publishing the draining state")

        yield deferLater(self._clock, timing.grace, lambda: None)
        self._call_safely(self._stop_accepting, "refusing new connections")

        window_end = self._clock.seconds() + timing.window
        # Room is kept for the flush at the end, within the bound.
        sessions_deadline = deadline - min(timing.flush_timeout, timing.timeout / 4)
        gone = yield self._wait_for_sessions(report, window_end, sessions_deadline)
        if not gone:
            report.left = self._open_connections()
            self.log.warn(
                "Node {node}: {left} sessions still open at the drain's bound; "
                "stopping anyway (they reconnect and resume from the inbox)",
                node=self.node_id,
                left=report.left,
            )
        self._cancel_calls()

        yield self._finish_work(deadline)
        report.unsent = yield self._flush(deadline)
        report.seconds = self._clock.seconds() - self._started_at
        return report

    def _call_safely(self, hook: Callable[[], object], what: str) -> None:
        try:
            hook()
        except Exception:
            self.log.failure(
                "Drain of {node}: {what} failed", node=self.node_id, what=what
            )

    @inlineCallbacks
    def _wait_for_sessions(
        self, report: DrainReport, window_end: float, deadline: float
    ) -> Any:
        # Polled, so that a session welcomed late (its claim was in flight
        # when the drain began) is told too, within what is left of the window.
        while True:
            self._tell_new_sessions(report, window_end)
            if not self._open_connections():
                return True
            if self._clock.seconds() >= deadline:
                return False
            yield deferLater(self._clock, self.timing.poll_interval, lambda: None)

    def _tell_new_sessions(self, report: DrainReport, window_end: float) -> None:
        now = self._clock.seconds()
        for sessions in list(self._gateway.local.values()):
            for client in list(sessions.values()):
                if client in self._scheduled or client.closed or client.closing:
                    continue
                if client.delivery is None:
                    # Not welcomed yet: a frame now would come before the welcome.
                    if now >= window_end + self.timing.move_timeout:
                        self._close(client, report)
                    continue
                self._scheduled.add(client)
                delay = self._rng.uniform(0.0, max(0.0, window_end - now))
                self._later(delay, self._tell, client, report)

    def _tell(self, client: ClientSession, report: DrainReport) -> None:
        if client.closed or client.closing:
            return
        within_ms = int(self.timing.move_timeout * 1000)
        client.send_frame(wire.reconnect_frame(within_ms))
        report.told += 1
        self._later(self.timing.move_timeout, self._close, client, report)

    def _close(self, client: ClientSession, report: DrainReport) -> None:
        if client.closed or client.closing:
            return
        client.closing = True
        report.closed += 1
        self.log.debug(
            "Closing {user}/{session}: it did not move in time",
            user=client.user,
            session=client.session,
        )
        client.link.close(wire.CLOSE_RESTARTING, CLOSE_REASON)

    def _later(self, delay: float, f: Callable[..., object], *args: Any) -> None:
        self._calls = [call for call in self._calls if call.active()]
        self._calls.append(self._clock.callLater(delay, f, *args))

    def _cancel_calls(self) -> None:
        calls, self._calls = self._calls, []
        for call in calls:
            if call.active():
                call.cancel()

    @inlineCallbacks
    def _finish_work(self, deadline: float) -> Any:
        pending = self._gateway.in_flight.count
        if not pending:
            return
        wait = max(0.0, deadline - self._clock.seconds())
        try:
            yield self._gateway.in_flight.idle().addTimeout(wait, self._clock)
        except DeferredTimeout:
            self.log.warn(
                "Node {node}: {count} sends still being stored at the drain's bound",
                node=self.node_id,
                count=self._gateway.in_flight.count,
            )

    @inlineCallbacks
    def _flush(self, deadline: float) -> Any:
        wait = max(
            0.1, min(self.timing.flush_timeout, deadline - self._clock.seconds())
        )
        try:
            # Bounded here too: the producer's own bound is not relied on.
            flushed = maybeDeferred(self._producer.flush, wait)
            unsent = yield flushed.addTimeout(wait + 1.0, self._clock)
        except Exception as e:
            self.log.warn(
                "Node {node}: Kafka producer not flushed: {error}",
                node=self.node_id,
                error=str(e) or type(e).__name__,
            )
            return -1
        if unsent:
            self.log.warn(
                "Node {node}: {count} Kafka records unsent after the flush",
                node=self.node_id,
                count=unsent,
            )
        return int(unsent)

    def _finished(self, result: Any) -> None:
        if isinstance(result, DrainReport):
            report = result
        else:
            self.log.failure("Drain of {node} failed", result, node=self.node_id)
            report = DrainReport(seconds=self._clock.seconds() - self._started_at)
        self.report = report
        self.log.info(
            "Node {node} drained in {seconds:.1f}s: {told} sessions told to move, "
            "{closed} closed with 1012, {left} left open, {unsent} records unsent",
            node=self.node_id,
            seconds=report.seconds,
            told=report.told,
            closed=report.closed,
            left=report.left,
            unsent=report.unsent,
        )
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(report)
