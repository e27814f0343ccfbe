"""RedisService: the node's connection to Redis, its timeouts and its health.

Every command either answers within the timeout or fails with
:class:`RedisUnavailable`; while Redis is known to be unreachable commands
fail at once instead of queueing. ``available`` says which it is, cheaply:
connection events and a periodic PING keep it current.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import txredisapi
from twisted.application import service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    TimeoutError,
    fail,
    inlineCallbacks,
    maybeDeferred,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsha.services import redis_metrics
from wsha.services.redis_link import LinkSettings, RedisTarget, redis_target
from wsha.services.redis_url import RedisAddress, parse_redis_url

__all__ = ["RedisAddress", "RedisService", "RedisUnavailable"]

UNAVAILABLE_REPLIES = (
    "READONLY",
    "LOADING",
    "MASTERDOWN",
    "NOREPLICAS",
    "TRYAGAIN",
    "CLUSTERDOWN",
)
"""Error replies that mean "not now" (a demoted master, a loading server)."""


class RedisUnavailable(Exception):
    """Redis cannot be reached now; the caller may retry later."""


class RedisService(service.Service):
    """Holds one pipelined, self-reconnecting Redis connection for the node.

    All of the node's commands share one connection on purpose: Redis runs the
    commands of one connection in the order they were sent, which keeps a
    client's sends in order without waiting for each reply.

    :param target: where the connection goes (a server or a Sentinel master).
    :param clock: times commands out and schedules the health checks.
    :param timeout: seconds to wait for a connection or a reply.
    :param health_interval: seconds between health PINGs.
    :param reconnect_max: the longest wait between reconnect attempts.
    """

    log = Logger()

    def __init__(
        self,
        target: RedisTarget,
        clock: IReactorTime,
        timeout: float = 5.0,
        health_interval: float = 1.0,
        reconnect_max: float = 2.0,
    ):
        self.target = target
        self.timeout = timeout
        self.available = False
        self.connection: Any = None
        self._clock = clock
        self._settings = LinkSettings(timeout, reconnect_max)
        self._links_up = 0
        self._down_since: float | None = None
        self._listeners: list[Callable[[bool], None]] = []
        self._first_up: Deferred[None] | None = None
        self._ping: Deferred[Any] | None = None
        self._verifying: Deferred[Any] | None = None
        self._protocol: Any = None
        self._health = LoopingCall(self._check_health)
        self._health.clock = clock
        self._health_interval = health_interval

    @classmethod
    def for_url(
        cls,
        url: str,
        reactor: Any,
        timeout: float = 5.0,
        health_interval: float = 1.0,
        reconnect_max: float = 2.0,
    ) -> RedisService:
        """The service for a ``redis://`` or ``sentinel://`` URL.

        :raises ValueError: if ``url`` is neither.
        """
        settings = LinkSettings(timeout, reconnect_max)
        target = redis_target(parse_redis_url(url), reactor, settings)
        return cls(target, reactor, timeout, health_interval, reconnect_max)

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(available)`` each time ``available`` flips."""
        self._listeners.append(listener)

    def startService(self) -> Deferred[None]:
        """Open the connection (it keeps reconnecting); fires once it is first up."""
        service.Service.startService(self)
        self.log.info("Connecting to Redis at {redis}", redis=self.target.describe())
        self._first_up = Deferred()
        self.connection = self.target.open(self, self._settings)
        self._health.start(self._health_interval, now=False)
        return self._first_up

    @inlineCallbacks
    def stopService(self) -> Any:
        """Stop the health checks and close the connection; fires once closed."""
        service.Service.stopService(self)
        if self._health.running:
            self._health.stop()
        for pending in (self._ping, self._verifying):
            if pending is not None:
                pending.cancel()
        # Closing on purpose is not an outage: nothing to report.
        self._listeners = []
        self.available = False
        self._links_up = 0
        connection, self.connection = self.connection, None
        if connection is not None:
            yield connection.disconnect()
        yield self.target.close()

    # Commands

    def eval(
        self, script: str, keys: Sequence[str] = (), args: Sequence[Any] = ()
    ) -> Deferred[Any]:
        """Run a Lua script (cached by its hash); see :meth:`execute_command`."""
        return self._call(
            lambda c: c.eval(script, list(keys), list(args)),
            redis_metrics.script_name(script),
        )

    def execute_command(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """Run a command; fires with its reply, or fails with RedisUnavailable.

        It fails at once while Redis is unavailable, and after ``timeout``
        seconds without a reply. A command that timed out may still have run.
        """
        return self._call(
            lambda c: c.execute_command(*args, **kwargs),
            redis_metrics.command_name(args),
        )

    def is_healthy(self) -> Deferred[bool]:
        """Fire with ``available`` (kept current; asks nothing of Redis)."""
        return succeed(self.available)

    def _call(
        self, command: Callable[[Any], Deferred[Any]], name: str
    ) -> Deferred[Any]:
        if not self.available or self.connection is None:
            redis_metrics.refused(name)
            return fail(RedisUnavailable(f"Redis at {self.target.describe()} is down"))
        d = maybeDeferred(command, self.connection)
        d.addTimeout(self.timeout, self._clock)
        redis_metrics.measure(d, name, self._clock, UNAVAILABLE_REPLIES)
        d.addErrback(self._classify)
        return d

    def _classify(self, reason: Failure) -> Failure:
        error = reason.value
        if isinstance(error, RedisUnavailable | CancelledError):
            return reason
        if isinstance(error, TimeoutError):
            return Failure(RedisUnavailable(f"no reply in {self.timeout}s"))
        if isinstance(error, txredisapi.ConnectionError):
            return Failure(RedisUnavailable(str(error)))
        if isinstance(error, txredisapi.ResponseError) and str(error).startswith(
            UNAVAILABLE_REPLIES
        ):
            return Failure(RedisUnavailable(str(error)))
        return reason

    # Health (the LinkWatcher side, and the periodic PING)

    def link_up(self, connection: Any) -> None:
        """The connection is ready: Redis is available."""
        self._links_up += 1
        self._protocol = connection
        self._set_available(True, "connected")
        first, self._first_up = self._first_up, None
        if first is not None:
            first.callback(None)

    def link_down(self, connection: Any) -> None:
        """The connection was lost: Redis is unavailable until it is remade."""
        self._links_up = max(0, self._links_up - 1)
        if connection is self._protocol:
            self._protocol = None
        if self._links_up == 0:
            self._set_available(False, "connection lost")

    def _check_health(self) -> None:
        # One PING and one check of the address at a time: a slow Redis or a
        # slow Sentinel never piles them up.
        if self._links_up == 0 or self.connection is None:
            return
        if self._ping is None:
            ping = maybeDeferred(self.connection.ping)
            ping.addTimeout(self.timeout, self._clock)
            self._ping = ping
            ping.addCallbacks(self._pinged, self._ping_failed)
        if self._verifying is None and self._protocol is not None:
            verify = maybeDeferred(self.target.verify, self._protocol)
            verify.addTimeout(self.timeout, self._clock)
            self._verifying = verify
            verify.addBoth(self._verified)

    def _verified(self, result: Any) -> None:
        self._verifying = None
        if isinstance(result, Failure) and not result.check(CancelledError):
            self.log.debug(
                "Could not check where Redis is: {error}",
                error=result.getErrorMessage(),
            )

    def _pinged(self, reply: Any) -> None:
        self._ping = None
        if self._links_up > 0:
            self._set_available(True, "answered PING")

    def _ping_failed(self, reason: Failure) -> None:
        self._ping = None
        if reason.check(CancelledError) and not self.running:
            return
        self._set_available(False, f"PING failed: {reason.getErrorMessage()}")

    def _set_available(self, available: bool, why: str) -> None:
        if available == self.available:
            return
        self.available = available
        now = self._clock.seconds()
        if available:
            outage = None if self._down_since is None else now - self._down_since
            self._down_since = None
            self.log.info(
                "Redis at {redis} available ({why}; outage {outage} s)",
                redis=self.target.describe(),
                why=why,
                outage=None if outage is None else round(outage, 3),
            )
        else:
            self._down_since = now
            self.log.warn(
                "Redis at {redis} unavailable ({why}): new connections get 1013, "
                "sends get retryable errors until it is back",
                redis=self.target.describe(),
                why=why,
            )
        for listener in list(self._listeners):
            try:
                listener(available)
            except Exception:
                self.log.failure("Redis availability listener failed")
