"""OutputGate: bounds what one connection buffers for a client that reads slowly.

The gate sits between a :class:`~wsha.client_session.ClientSession` and its
WebSocket. It is registered on the connection's transport as a push producer,
so Twisted pauses it when the transport's write buffer fills (the client is not
reading fast enough) and resumes it once the buffer has drained. While paused:

- producers that can wait hold back: market data keeps only the latest value
  per instrument, inbox delivery stops reading (the inbox keeps the rest);
  they ask :attr:`OutputGate.writable` and register :meth:`OutputGate.on_resume`;
- everything still written (replies, other traffic) is counted, and past
  ``max_output_bytes`` the connection is closed with 4008 at once;
- a connection paused for longer than ``slow_client_timeout`` is closed with
  4008 too.

Nothing is written after the gate has closed the connection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from wsha import wire

TOO_SLOW_REASON = "client too slow"


@dataclass(frozen=True)
class OutputLimits:
    """How far a connection may fall behind before it is closed with 4008.

    :param slow_client_timeout: seconds a connection may stay paused.
    :param max_output_bytes: bytes that may be written to a paused connection.
    """

    slow_client_timeout: float = 10.0
    max_output_bytes: int = 1024 * 1024


class GatedLink(Protocol):
    """What the gate needs from the WebSocket connection."""

    def send_frame(self, payload: bytes) -> None:
        """Send one text frame."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection with a WebSocket close code."""

    def register_producer(self, producer: IPushProducer) -> None:
        """Register ``producer`` as the transport's streaming producer."""


@implementer(IPushProducer)
class OutputGate:
    """The writing side of one connection, and its flow control.

    It is itself a link (``send_frame``, ``close``), so everything the session
    writes passes through it.

    :param link: the WebSocket connection.
    :param clock: times the slow-client timeout.
    :param limits: when to give up on a slow client.
    :param name: names the connection in logs (``user/session``).
    """

    log = Logger()

    def __init__(
        self, link: GatedLink, clock: IReactorTime, limits: OutputLimits, name: str
    ):
        self._link = link
        self._clock = clock
        self.limits = limits
        self.name = name
        self.paused = False
        self.closed = False
        self.paused_bytes = 0
        self._resume_hooks: list[Callable[[], None]] = []
        self._timeout: IDelayedCall | None = None

    @property
    def writable(self) -> bool:
        """Whether frames that can wait should be written now."""
        return not (self.paused or self.closed)

    def start(self) -> None:
        """Register on the connection's transport, which then paces the gate."""
        self._link.register_producer(self)

    def on_resume(self, hook: Callable[[], None]) -> None:
        """Call ``hook()`` each time the connection becomes writable again."""
        self._resume_hooks.append(hook)

    # The link side

    def send_frame(self, payload: bytes) -> None:
        """Write one frame; past the byte limit while paused, close with 4008."""
        if self.closed:
            return
        if self.paused:
            self.paused_bytes += len(payload)
            if self.paused_bytes > self.limits.max_output_bytes:
                self._too_slow(f"over {self.limits.max_output_bytes} bytes buffered")
                return
        self._link.send_frame(payload)

    def close(self, code: int, reason: str) -> None:
        """Close the connection with ``code``; nothing more is written."""
        if self.closed:
            return
        self.closed = True
        self._cancel_timeout()
        self._link.close(code, reason)

    def stop(self) -> None:
        """The connection is gone: write nothing more, time nothing more."""
        self.closed = True
        self._cancel_timeout()

    # IPushProducer, called by the transport

    def pauseProducing(self) -> None:
        """The transport's buffer is full: hold back, and start the timeout.

        Twisted calls this on every write while the buffer stays full.
        """
        if self.paused or self.closed:
            return
        self.paused = True
        self.paused_bytes = 0
        self._timeout = self._clock.callLater(
            self.limits.slow_client_timeout,
            self._too_slow,
            f"paused over {self.limits.slow_client_timeout} s",
        )

    def resumeProducing(self) -> None:
        """The buffer has drained: let the held-back producers write again."""
        if not self.paused or self.closed:
            return
        self.paused = False
        self._cancel_timeout()
        hooks = self._resume_hooks
        for i, hook in enumerate(hooks):
            if not self.writable:
                # A hook filled the buffer again: the ones left go first next time.
                self._resume_hooks = hooks[i:] + hooks[:i]
                return
            try:
                hook()
            except Exception:
                self.log.failure("Resume hook of {name} failed", name=self.name)

    def stopProducing(self) -> None:
        """The transport is closing: same as :meth:`stop`."""
        self.stop()

    def _too_slow(self, why: str) -> None:
        self._timeout = None
        self.log.info(
            "Closing {name} with {code}: {why}",
            name=self.name,
            code=wire.CLOSE_TOO_SLOW,
            why=why,
        )
        self.close(wire.CLOSE_TOO_SLOW, TOO_SLOW_REASON)

    def _cancel_timeout(self) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None
