"""Reconnecting links to Redis, directly or to the master Sentinel names.

A :class:`RedisTarget` opens links; each link is a txredisapi connection
factory that reconnects by itself and reports every connection made usable
and every connection lost to a :class:`LinkWatcher`. A target made from a
``sentinel://`` URL asks the Sentinels for the master before every connection
attempt, so a link follows a failover on its next reconnect; every link of one
target shares the Sentinel connections, so a second link (the Pub/Sub one a
later feature adds) follows the same master as the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import txredisapi
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsha.services.redis_url import RedisAddress, SentinelAddress

FIRST_RETRY_DELAY = 0.1
"""Seconds before the first reconnect attempt after a connection is lost."""


class LinkWatcher(Protocol):
    """Told when a link's connection becomes usable and when it is lost."""

    def link_up(self, connection: Any) -> None:
        """A connection is ready for commands (authenticated, database selected)."""

    def link_down(self, connection: Any) -> None:
        """A connection that was ready has been lost."""


@dataclass(frozen=True)
class LinkSettings:
    """How a link connects and retries.

    :param timeout: seconds to wait for a connection or a reply; a reply
        overdue this long also drops the connection, which is then remade.
    :param reconnect_max: the longest wait between reconnect attempts.
    """

    timeout: float = 5.0
    reconnect_max: float = 2.0


class _Observed:
    """Reports a txredisapi factory's pool changes to a :class:`LinkWatcher`.

    It also keeps the factory reconnecting for good: txredisapi stops trying
    when AUTH or SELECT fails on a new connection, which a hung server causes
    as surely as a wrong password, and a node must outlive both. Links are
    closed with ``disconnect()``, which does not go through ``stopTrying``.
    """

    watcher: LinkWatcher
    pool: list[Any]
    deferred: Deferred[Any] | None

    def _watch(self, watcher: LinkWatcher) -> None:
        self.watcher = watcher
        if self.deferred is not None:
            # Nobody waits on the first connection here: the watcher hears of
            # it, and a failed attempt is retried (and logged by txredisapi).
            self.deferred.addErrback(lambda reason: None)

    def stopTrying(self) -> Deferred[None]:
        """Keep reconnecting (see the class docstring)."""
        return succeed(None)

    def addConnection(self, conn: Any) -> None:
        """Add a ready connection to the pool, then tell the watcher."""
        super().addConnection(conn)  # type: ignore[misc]
        if conn in self.pool:
            self.watcher.link_up(conn)

    def delConnection(self, conn: Any) -> None:
        """Drop a lost connection from the pool, then tell the watcher."""
        pooled = conn in self.pool
        super().delConnection(conn)  # type: ignore[misc]
        if pooled:
            self.watcher.link_down(conn)


class _WatchedFactory(_Observed, txredisapi.RedisFactory):  # type: ignore[misc]
    """A one-connection RedisFactory whose pool changes are watched."""

    def __init__(
        self, watcher: LinkWatcher, settings: LinkSettings, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._watch(watcher)
        self.initialDelay = min(FIRST_RETRY_DELAY, settings.reconnect_max)
        self.maxDelay = settings.reconnect_max


class _WatchedSentinelFactory(_Observed, txredisapi.SentinelConnectionFactory):  # type: ignore[misc]
    """A Sentinel master factory whose pool changes are watched.

    txredisapi's Sentinel endpoint uses the factory's ``maxDelay`` as the
    connect timeout to the master too, so ``reconnect_max`` bounds both.
    """

    def __init__(
        self, *args: Any, watcher: LinkWatcher, settings: LinkSettings, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._watch(watcher)
        self.maxDelay = settings.reconnect_max


def _factory_options(
    address: RedisAddress | SentinelAddress, settings: LinkSettings
) -> dict[str, Any]:
    """The txredisapi factory arguments every link shares: one lazy, pipelined
    connection with a reply timeout and replies left as strings."""
    return {
        "dbid": address.db,
        "poolsize": 1,
        "isLazy": True,
        "password": address.password,
        "username": address.username,
        "replyTimeout": settings.timeout,
        "convertNumbers": False,
    }


class RedisTarget(Protocol):
    """Something links can be opened to: one server, or a Sentinel master."""

    def describe(self) -> str:
        """Where the links go, for logs (never a password)."""

    def open(
        self, watcher: LinkWatcher, settings: LinkSettings, protocol: Any = None
    ) -> Any:
        """Start a reconnecting link; returns its txredisapi connection handler.

        The handler runs commands on the link's connection and is closed with
        its ``disconnect()``. ``protocol`` replaces txredisapi's protocol class
        (a Pub/Sub subscriber, say); the link's factory is its ``factory``.
        """

    def verify(self, connection: Any) -> Deferred[bool]:
        """Fire True if ``connection`` still goes where it should.

        When it does not (the Sentinels name another master), the connection
        is dropped so that its link reconnects to the right server, and this
        fires False.
        """

    def close(self) -> Deferred[Any]:
        """Release what the target holds besides its links (Sentinel connections)."""


class DirectTarget:
    """Links to one Redis server.

    :param address: the server.
    :param reactor: connects the links.
    """

    def __init__(self, address: RedisAddress, reactor: Any):
        self.address = address
        self._reactor = reactor

    def describe(self) -> str:
        """``host:port/db``."""
        return self.address.describe()

    def open(
        self, watcher: LinkWatcher, settings: LinkSettings, protocol: Any = None
    ) -> Any:
        """Start a link to the server; see :meth:`RedisTarget.open`."""
        address = self.address
        factory = _WatchedFactory(
            watcher,
            settings,
            uuid=f"{address.host}:{address.port}",
            **_factory_options(address, settings),
        )
        if protocol is not None:
            factory.protocol = protocol
        endpoint = HostnameEndpoint(
            self._reactor, address.host, address.port, timeout=settings.timeout
        )
        factory.startConnecting(endpoint)
        return factory.handler

    def verify(self, connection: Any) -> Deferred[bool]:
        """A server's address does not move: always True."""
        return succeed(True)

    def close(self) -> Deferred[Any]:
        """Nothing to release."""
        return succeed(None)


class SentinelTarget:
    """Links to the master a set of Sentinels names, followed through failovers.

    txredisapi asks the Sentinels for the master's address before every
    connection attempt, refuses a server whose ROLE is not master, and drops
    the links when the address changes, so a failover moves every link to the
    new master on its next reconnect (Sentinel also disconnects the clients of
    a demoted master).

    :param address: the Sentinels and the master's name.
    :param settings: also bounds each question to the Sentinels.
    :param sentinel: a txredisapi ``Sentinel`` to use instead of making one.
    """

    log = Logger()

    def __init__(
        self, address: SentinelAddress, settings: LinkSettings, sentinel: Any = None
    ):
        self.address = address
        self._sentinel = sentinel
        self._settings = settings

    def describe(self) -> str:
        """``master/db via sentinels host:port,...``."""
        return self.address.describe()

    def open(
        self, watcher: LinkWatcher, settings: LinkSettings, protocol: Any = None
    ) -> Any:
        """Start a link to the current master; see :meth:`RedisTarget.open`."""
        address = self.address
        factory_class: Any = _WatchedSentinelFactory
        if protocol is not None:
            # Without the master's role check: Pub/Sub works on any server.
            factory_class = type(
                "SubscriberSentinelFactory", (factory_class,), {"protocol": protocol}
            )
        return self._sentinels().master_for(
            address.master,
            factory_class=factory_class,
            watcher=watcher,
            settings=settings,
            **_factory_options(address, settings),
        )

    def verify(self, connection: Any) -> Deferred[bool]:
        """Drop ``connection`` if the Sentinels now name another master.

        txredisapi only asks the Sentinels when it connects, and Sentinel
        leaves a demoted master's clients connected for several seconds after
        a failover, writing to a server about to become a replica; this closes
        that window to one health interval. When no Sentinel answers, the
        connection is kept.
        """
        d: Deferred[Any] = self._sentinels().discover_master(self.address.master)

        def compare(master: tuple[str, int]) -> bool:
            peer = connection.transport.getPeer()
            host, port = master
            if (peer.host, peer.port) == (host, int(port)):
                return True
            self.log.info(
                "Redis master of {master} moved from {old} to {new}; reconnecting",
                master=self.address.master,
                old=f"{peer.host}:{peer.port}",
                new=f"{host}:{port}",
            )
            connection.transport.loseConnection()
            return False

        def unknown(reason: Failure) -> bool:
            reason.trap(txredisapi.MasterNotFoundError)
            return True

        checked: Deferred[bool] = d.addCallbacks(compare, unknown)
        return checked

    def close(self) -> Deferred[Any]:
        """Close the connections to the Sentinels."""
        sentinel, self._sentinel = self._sentinel, None
        if sentinel is None:
            return succeed(None)
        d: Deferred[Any] = sentinel.disconnect()
        return d

    def _sentinels(self) -> Any:
        # One set of Sentinel connections for every link of this target.
        if self._sentinel is None:
            self._sentinel = txredisapi.Sentinel(
                list(self.address.sentinels),
                connectTimeout=self._settings.timeout,
                replyTimeout=self._settings.timeout,
            )
            # A question no Sentinel answers for a usable master fails after
            # this long (txredisapi's default is 10 s), and is asked again.
            self._sentinel.discovery_timeout = self._settings.timeout
        return self._sentinel


def redis_target(
    address: RedisAddress | SentinelAddress, reactor: Any, settings: LinkSettings
) -> RedisTarget:
    """The target for a parsed ``--redis`` URL."""
    if isinstance(address, SentinelAddress):
        return SentinelTarget(address, settings)
    return DirectTarget(address, reactor)
