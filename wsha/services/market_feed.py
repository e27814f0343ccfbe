"""MarketFeed: reads the instruments this node's clients watch, and fans ticks out.

One Redis connection of its own, apart from the node's command connection,
because ``XREAD BLOCK`` holds the connection it runs on. The feed loops on

    XREAD BLOCK <ms> COUNT <n> STREAMS <key...> <last id read...>

over the instruments that have at least one local watcher (reference
counted: an instrument is read only while a local session watches it), and
hands each batch of new ticks to that instrument's watchers, in stream order.

A watcher joins at the id it has already seen (its snapshot's). If the feed
has read past that id, it rewinds the instrument to it: the entries in between
are read again, and the watchers that had them drop them by id. A read in
flight when the set of instruments or a position changes is cut short with
``CLIENT UNBLOCK`` from the command connection, so a new watcher does not wait
for the block to expire; its reply is not used for the instruments that
changed. The feed reconnects by itself and carries on from the ids it last read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import txredisapi
from twisted.application import service
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsha import keys, wire
from wsha.inbox import RedisCommands
from wsha.market import Tick, parse_entries
from wsha.services.redis_link import LinkSettings, RedisTarget

BLOCK_MS = 1000
"""How long one XREAD waits for new entries; also bounds how stale the set is
when ``CLIENT UNBLOCK`` is not allowed."""

READ_COUNT = 100
"""The most entries one XREAD returns per instrument: what one reply fans out
in a single reactor turn, before any connection's buffer can drain."""


class TickWatcher(Protocol):
    """Something that wants an instrument's new ticks (a client connection)."""

    def on_ticks(self, instrument: str, ticks: Sequence[Tick]) -> None:
        """New ticks of ``instrument``, in stream order, after those given before."""


class MarketFeed(service.Service):
    """The node's reader of instrument streams.

    :param target: where Redis is (the same as the command connection's).
    :param clock: schedules retries.
    :param settings: the feed link's timeouts; its reply timeout must exceed
        the block time (see :func:`feed_link_settings`).
    :param commands: the node's command connection, to unblock the feed's read.
    :param max_value_bytes: ticks with larger values are skipped.
    :param block_ms: how long one XREAD blocks.
    :param count: the most entries read per instrument per XREAD.
    :param retry_delay: seconds before reading again after a failed read.
    """

    log = Logger()

    def __init__(
        self,
        target: RedisTarget,
        clock: IReactorTime,
        settings: LinkSettings,
        commands: RedisCommands | None = None,
        max_value_bytes: int = 64 * 1024,
        block_ms: int = BLOCK_MS,
        count: int = READ_COUNT,
        retry_delay: float = 1.0,
    ):
        self._target = target
        self._clock = clock
        self._settings = settings
        self._commands = commands
        self._max_value_bytes = max_value_bytes
        self._block_ms = block_ms
        self._count = count
        self._retry_delay = retry_delay
        self._watchers: dict[str, set[TickWatcher]] = {}
        self._positions: dict[str, str] = {}
        self._handler: Any = None
        self._connection: Any = None
        self._client_id: Any = None
        self._reading: dict[str, str] | None = None
        self._retry: IDelayedCall | None = None
        self._wake_call: IDelayedCall | None = None

    # Watchers

    def watch(self, instrument: str, watcher: TickWatcher, after: str) -> None:
        """Give ``watcher`` the ticks of ``instrument`` that follow ``after``.

        :param after: the last id the watcher has (its snapshot's, ``0-0`` if none).
        """
        self._watchers.setdefault(instrument, set()).add(watcher)
        position = self._positions.get(instrument)
        if position is None or wire.stream_id_key(after) < wire.stream_id_key(position):
            self._positions[instrument] = after
            self._wake()

    def unwatch(self, instrument: str, watcher: TickWatcher) -> None:
        """Stop giving ``watcher`` ticks; the last watcher's leaving stops the reads."""
        watchers = self._watchers.get(instrument)
        if watchers is None:
            return
        watchers.discard(watcher)
        if not watchers:
            del self._watchers[instrument]
            del self._positions[instrument]

    def watched(self) -> dict[str, str]:
        """The instruments read now, with the last id read of each."""
        return dict(self._positions)

    def watcher_count(self, instrument: str) -> int:
        """How many local watchers ``instrument`` has."""
        return len(self._watchers.get(instrument, ()))

    # Service

    def startService(self) -> None:
        """Open the feed's own connection; reading starts once it is up."""
        super().startService()
        self._handler = self._target.open(self, self._settings)

    @inlineCallbacks
    def stopService(self) -> Any:
        """Stop reading and close the connection; fires once it is closed."""
        super().stopService()
        for call in (self._retry, self._wake_call):
            if call is not None and call.active():
                call.cancel()
        self._retry = self._wake_call = None
        handler, self._handler = self._handler, None
        self._connection = None
        if handler is not None:
            yield handler.disconnect()

    # The LinkWatcher side

    def link_up(self, connection: Any) -> None:
        """The feed's connection is ready: learn its id, then read."""
        self._connection = connection
        self._client_id = None
        self.log.debug("Market feed connected to Redis")
        d = connection.execute_command("CLIENT", "ID")
        d.addCallbacks(self._got_client_id, self._no_client_id, (connection,))
        self._read()

    def link_down(self, connection: Any) -> None:
        """The connection was lost; it is remade and the reads carry on."""
        if connection is self._connection:
            self._connection = None
            self._client_id = None

    def _got_client_id(self, client_id: Any, connection: Any) -> None:
        if connection is self._connection:
            self._client_id = client_id

    def _no_client_id(self, reason: Failure) -> None:
        # Without it, a change of the watched set waits for the block to end.
        self.log.debug(
            "Market feed: no CLIENT ID ({error})", error=reason.getErrorMessage()
        )

    # Reading

    def _wake(self) -> None:
        # Changes within one reactor turn restart the read once.
        if self._wake_call is None and self.running:
            self._wake_call = self._clock.callLater(0, self._woken)

    def _woken(self) -> None:
        self._wake_call = None
        if self._reading is None:
            self._read()
            return
        if self._client_id is None or self._commands is None:
            return
        # Known shortcoming: an UNBLOCK that reaches Redis before the XREAD it
        # targets does nothing, and the change waits for the block (1 s); the
        # window is one round trip, so it is not retried.
        d = self._commands.execute_command("CLIENT", "UNBLOCK", self._client_id)
        d.addErrback(self._unblock_failed)

    def _unblock_failed(self, reason: Failure) -> None:
        self.log.debug(
            "Market feed: CLIENT UNBLOCK failed ({error}); the read ends by itself",
            error=reason.getErrorMessage(),
        )

    def _read(self) -> None:
        connection = self._connection
        if not self.running or connection is None or self._reading is not None:
            return
        if not self._positions:
            return
        requested = dict(self._positions)
        names = {keys.instrument_ticks(i): i for i in requested}
        self._reading = requested
        d: Deferred[Any] = connection.execute_command(
            "XREAD",
            "BLOCK",
            self._block_ms,
            "COUNT",
            self._count,
            "STREAMS",
            *names,
            *requested.values(),
        )
        d.addCallbacks(self._got, self._failed, (requested, names))
        d.addErrback(self._broken)

    def _got(
        self, reply: Any, requested: dict[str, str], names: dict[str, str]
    ) -> None:
        self._reading = None
        for key, entries in reply or ():
            instrument = names.get(str(key))
            # A position that moved while this read was out (a rewind, or an
            # instrument dropped and watched again) is read again from there.
            if instrument is None or not entries:
                continue
            if self._positions.get(instrument) != requested[instrument]:
                continue
            self._positions[instrument] = str(entries[-1][0])
            ticks = parse_entries(instrument, entries, self._max_value_bytes)
            if ticks:
                self._fan_out(instrument, ticks)
        self._read()

    def _fan_out(self, instrument: str, ticks: list[Tick]) -> None:
        for watcher in list(self._watchers.get(instrument, ())):
            try:
                watcher.on_ticks(instrument, ticks)
            except Exception:
                self.log.failure(
                    "A watcher of {instrument} failed", instrument=instrument
                )

    def _failed(self, reason: Failure) -> None:
        self._reading = None
        if not self.running:
            return
        # A lost connection is logged by the node's Redis service; it is
        # remade and link_up reads again. Anything else is retried later.
        lost = self._connection is None or reason.check(
            txredisapi.ConnectionError, CancelledError
        )
        emit = self.log.debug if lost else self.log.warn
        emit(
            "Market feed read failed, retrying: {error}",
            error=reason.getErrorMessage(),
        )
        self._retry_later()

    def _retry_later(self) -> None:
        if self._retry is None and self.running:
            self._retry = self._clock.callLater(self._retry_delay, self._retried)

    def _retried(self) -> None:
        self._retry = None
        self._read()

    def _broken(self, reason: Failure) -> None:
        self.log.failure("Market feed loop failed", reason)
        self._reading = None
        self._retry_later()


def feed_link_settings(timeout: float, reconnect_max: float) -> LinkSettings:
    """Settings for the feed's link: its reply timeout outlasts a blocked read.

    :param timeout: the node's Redis timeout.
    :param reconnect_max: the longest wait between reconnect attempts.
    """
    return LinkSettings(timeout + BLOCK_MS / 1000, reconnect_max)
