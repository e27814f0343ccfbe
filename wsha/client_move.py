"""Make-before-break moves of :class:`wsha.client.GatewayClient`.

A draining node sends ``reconnect`` (docs/protocol.md, "Moving to another
node"). The client then opens a new connection to the same URL while the old
one stays open; the balancer sends it to another node, whose claim of the
session makes the old node close the old link with 4001. That 4001 is
expected: the client caused it.

From the moment the move begins the old link delivers nothing more to the
application (messages, group messages, broadcasts, ticks are dropped there):
the new connection resumes after the last ids handled *before* the move, so
whatever the old link would still have delivered comes again on the new one,
once and in order. Sends and acks keep using the old link until the new one
is welcomed; every send not yet acknowledged is then written again on the new
link (the gateway stores each id once).

This module keeps the move's state; the client calls it from its connection
hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall

DELIVERIES = frozenset({"message", "group_message", "broadcast", "tick"})
"""Frame types that carry an id the client resumes after: held back on a link
that was asked to move."""

RETIRE_TIMEOUT = 10.0
"""Seconds an old link may stay open after the move; then the client closes it."""


class LinkMove:
    """The state of one client's move from a link to a new one.

    :param reactor: schedules retries and the closing of old links.
    :param connect: opens a new connection; returns its factory, which names
        the link that opens from it (``link.factory``), or None if the client
        is not running.
    """

    def __init__(self, reactor: Any, connect: Callable[[], object | None]):
        self._reactor = reactor
        self._connect = connect
        # The link asked to move: it stays the current one (sends, acks) but
        # delivers nothing more.
        self.source: Any | None = None
        # The factory of the connection attempt under way, if any.
        self.attempt: object | None = None
        # The link of that attempt once it opened, until its welcome.
        self.incoming: Any | None = None
        self._retry: IDelayedCall | None = None
        self._retiring: dict[Any, IDelayedCall] = {}

    @property
    def active(self) -> bool:
        """True from the ``reconnect`` frame until the new link is welcomed."""
        return self.source is not None or self.attempt is not None

    def holds_back(self, link: Any, frame: dict[str, Any]) -> bool:
        """True if ``frame`` is a delivery on a link that was asked to move."""
        return link is self.source and frame.get("type") in DELIVERIES

    def begin(self, link: Any) -> bool:
        """Start moving away from ``link``; False if a move is under way."""
        if self.active:
            return False
        self.source = link
        self._try()
        return True

    def owns(self, link: Any) -> bool:
        """True if ``link`` comes from the move's connection attempt."""
        return self.attempt is not None and getattr(link, "factory", None) is (
            self.attempt
        )

    def opened(self, link: Any) -> bool:
        """A link opened: True if it is the move's (kept aside until welcomed)."""
        if not self.owns(link):
            return False
        self.incoming = link
        return True

    def completed(self) -> Any | None:
        """The new link was welcomed: end the move; return the old link, if open."""
        source, self.source, self.attempt = self.source, None, None
        self.incoming = None
        self._cancel_retry()
        return source

    def failed(self, delay: float) -> None:
        """The attempt failed before its welcome; try again after ``delay``
        while the old link is open."""
        self.attempt = self.incoming = None
        if self.source is not None and self._retry is None:
            self._retry = self._reactor.callLater(delay, self._try)

    def give_up(self) -> None:
        """Stop trying: the old link stays as it is until its node closes it."""
        self.attempt = self.incoming = None
        self._cancel_retry()

    def source_closed(self) -> bool:
        """The old link closed; True if an attempt is under way (wait for it)."""
        self.source = None
        self._cancel_retry()
        return self.attempt is not None

    def retire(self, link: Any, close: Callable[[], object]) -> None:
        """Have ``close`` called if the old ``link`` is still open after
        :data:`RETIRE_TIMEOUT` (its node normally closes it with 4001 first)."""
        self._retiring[link] = self._reactor.callLater(
            RETIRE_TIMEOUT, self._close_retired, link, close
        )

    def forget(self, link: Any) -> None:
        """An old link closed: nothing more to do for it."""
        call = self._retiring.pop(link, None)
        if call is not None and call.active():
            call.cancel()

    def reset(self) -> Any | None:
        """Drop the move and every timer (the client stops or switches network);
        return the move's new link if one is open."""
        incoming = self.incoming
        self.source = self.attempt = self.incoming = None
        self._cancel_retry()
        for link in list(self._retiring):
            self.forget(link)
        return incoming

    def _try(self) -> None:
        self._retry = None
        self.attempt = self._connect()

    def _cancel_retry(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    def _close_retired(self, link: Any, close: Callable[[], object]) -> None:
        self._retiring.pop(link, None)
        close()
