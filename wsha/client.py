"""A Twisted client for the wsha gateway that speaks docs/protocol.md.

It remembers the last inbox id it saw and resumes after it, acknowledges what
it received, keeps every send until the gateway acknowledges it and re-sends
it with the same id after a reconnect, and reconnects with capped, fully
jittered exponential backoff, deciding from the close code what to do.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlencode, urlparse

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IDelayedCall, IPushProducer, ITCPTransport
from twisted.logger import Logger

from wsha import wire
from wsha.client_groups import ClientGroups
from wsha.client_market import Watchlist
from wsha.client_move import LinkMove
from wsha.client_outbox import Backoff, Outbox, SendRejected

__all__ = ["Backoff", "GatewayClient", "SendRejected"]

Token = str | Callable[[], str]

# What the client does after each close code (docs/protocol.md, "Close codes").
STOP_CODES = {wire.CLOSE_TAKEN_OVER, wire.CLOSE_POLICY, wire.CLOSE_TOO_MANY_SESSIONS}
NOW_CODES = {wire.CLOSE_RESTARTING}


def _tcp(link: WebSocketClientProtocol) -> ITCPTransport:
    """The link's TCP transport (the client only ever connects over TCP)."""
    return cast(ITCPTransport, link.transport)


@dataclass
class ClientStats:
    """Counters an application or a test can read."""

    connects: int = 0
    messages: int = 0
    duplicates_dropped: int = 0
    resends: int = 0
    broadcasts: int = 0
    broadcast_duplicates_dropped: int = 0
    closes: dict[int, int] = field(default_factory=dict)
    moves: int = 0


class _ClientProtocol(WebSocketClientProtocol):
    owner: GatewayClient | None = None

    def connectionMade(self) -> None:
        # Autobahn sets TCP_NODELAY before it reads the factory's option, so
        # Nagle stays on and a send waits behind the gateway's delayed ACK.
        super().connectionMade()
        transport = self.transport
        if ITCPTransport.providedBy(transport):
            transport.setTcpNoDelay(True)

    def onOpen(self) -> None:
        self.owner = self.factory.owner
        self.owner._opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.owner is not None and not isBinary:
            self.owner._frame(self, json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        owner = self.owner or self.factory.owner
        owner._closed(self, code, reason)


class GatewayClient:
    """A resuming, retrying client of one user session.

    :param reactor: the reactor.
    :param url: the gateway's WebSocket URL, e.g. ``ws://127.0.0.1:8080/ws``.
    :param token: a JWT, or a callable returning a fresh one (called per connect).
    :param session: this device's session id.
    :param on_message: called with each new ``message`` frame, in inbox order.
    :param bind_address: the local address to connect from, if not the default.
    :param after: the last inbox id this device saw in an earlier life.
    :param max_pending: the most unacknowledged sends kept; past it ``send``
        fails at once with ``queue_full`` instead of buffering without bound.
    :param max_in_flight: the most sends written and not yet answered; the
        rest wait in order in the client.
    :param on_broadcast: called with each new ``broadcast`` frame, in history
        order (broadcasts are acknowledged like messages).
    :param broadcast_after: the last broadcast id this device saw in an earlier
        life.

    Hooks the application may set: ``on_welcome(frame)`` after each (re)connect;
    ``on_resync(frame)`` when a resume could not be honoured because messages
    after ``after`` were trimmed from the inbox or expired (the application
    should reload its state from its own source); ``on_stopped(code, reason)``
    when a close code says not to reconnect (4001 taken over, 1008 policy);
    ``on_disconnected(code, reason)`` whenever the current link is lost;
    ``on_tick(frame)`` with each market data tick of the instruments watched
    (:meth:`watch`), in order per instrument.
    A network change is signalled with :meth:`switch_network`. A ``reconnect``
    frame (a draining node) moves the session to a new connection before the
    old one closes (:mod:`wsha.client_move`); ``stats.moves`` counts them. Group
    messages and presence events go to the hooks of ``groups``
    (:class:`~wsha.client_groups.ClientGroups`).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        url: str,
        token: Token,
        session: str,
        on_message: Callable[[dict[str, Any]], None],
        bind_address: str | None = None,
        after: str | None = None,
        ack_interval: float = 0.05,
        ping_interval: float = 10.0,
        ping_timeout: float = 5.0,
        rng: random.Random | None = None,
        max_pending: int = 10_000,
        max_in_flight: int = 256,
        on_broadcast: Callable[[dict[str, Any]], None] | None = None,
        broadcast_after: str | None = None,
    ):
        self._reactor = reactor
        self.url = url
        self._token = token
        self.session = session
        self._on_message = on_message
        self.bind_address = bind_address
        self.last_id = after
        self.on_broadcast = on_broadcast
        self.last_broadcast_id = broadcast_after
        self._broadcast_acked_upto = broadcast_after
        self._ack_interval = ack_interval
        self._ping = (ping_interval, ping_timeout)
        self._rng = rng or random.Random()
        self.backoff = Backoff()
        self.stats = ClientStats()
        self.welcome: dict[str, Any] | None = None
        self.outbox = Outbox(
            reactor,
            self._write_current,
            self._rng,
            max_pending,
            max_in_flight,
            self.stats,
        )
        # Paces resends after retryable errors (Redis away, say); reset by acks.
        self.send_backoff = self.outbox.backoff
        self.on_welcome: Callable[[dict[str, Any]], None] | None = None
        self.on_resync: Callable[[dict[str, Any]], None] | None = None
        self.on_disconnected: Callable[[int | None, str | None], None] | None = None
        self.on_stopped: Callable[[int | None, str | None], None] | None = None
        self.on_tick: Callable[[dict[str, Any]], None] | None = None
        self.market = Watchlist(self._write_current, self._tick, reactor)

        self._link: _ClientProtocol | None = None
        self._abandoned: list[_ClientProtocol] = []
        self._acked_upto: str | None = after
        self._ack_call: IDelayedCall | None = None
        self._reconnect_call: IDelayedCall | None = None
        self._running = False
        self._connected_waiters: list[Deferred[dict[str, Any]]] = []
        self.groups = ClientGroups(self._write_current)
        self.move = LinkMove(reactor, self._connect)

    # Public API

    def start(self) -> None:
        """Connect, and keep connected until :meth:`stop` or a stopping close code."""
        self._running = True
        self._connect()

    def stop(self) -> None:
        """Close for good, including any abandoned links."""
        self._running = False
        self.market.stop()
        self.outbox.cancel_hold()
        for call in (self._reconnect_call, self._ack_call):
            if call is not None and call.active():
                call.cancel()
        if self._link is not None:
            self._flush_ack()
            self._link.sendClose(wire.CLOSE_NORMAL)
        incoming = self.move.reset()
        if incoming is not None:
            incoming.sendClose(wire.CLOSE_NORMAL)
        for link in self._abandoned:
            _tcp(link).abortConnection()
        self._abandoned = []

    def send(
        self, to: str, body: Any, client_id: str | None = None
    ) -> Deferred[dict[str, Any]]:
        """Send ``body`` to user ``to``; fires with the gateway's ``ack`` frame.

        The send is kept, and re-sent with the same id after any reconnect,
        until the gateway acknowledges it; the gateway stores it once.
        """
        frame = {
            "type": "send",
            "to": to,
            "id": client_id or uuid.uuid4().hex,
            "body": body,
        }
        return self.outbox.enqueue(frame)

    def publish(
        self, group: str, body: Any, client_id: str | None = None
    ) -> Deferred[dict[str, Any]]:
        """Publish ``body`` to ``group`` (this session must be subscribed).

        Kept and re-sent like :meth:`send`, in one order with the sends;
        fires with the gateway's ``ack`` frame (its ``history`` is the id).
        """
        frame = {
            "type": "publish",
            "group": group,
            "id": client_id or uuid.uuid4().hex,
            "body": body,
        }
        return self.outbox.enqueue(frame)

    def subscribe(
        self, group: str, presence: bool = False, after: str | None = None
    ) -> Deferred[dict[str, Any]]:
        """Subscribe this session to ``group``; fires with the ``subscribed`` frame.

        The gateway keeps the subscription across reconnects, on any node.
        """
        frame: dict[str, Any] = {
            "type": "subscribe",
            "group": group,
            "presence": presence,
        }
        if after is not None:
            frame["after"] = after
        return self.groups.request(frame)

    def unsubscribe(self, group: str) -> Deferred[dict[str, Any]]:
        """Unsubscribe from ``group``; fires with the ``unsubscribed`` frame."""
        return self.groups.request({"type": "unsubscribe", "group": group})

    def presence(self, group: str) -> Deferred[dict[str, Any]]:
        """Ask who is online in ``group``; fires with the ``presence`` frame."""
        return self.groups.request({"type": "presence", "group": group})

    def watch(
        self, instrument: str, after: str | None = None
    ) -> Deferred[dict[str, Any]]:
        """Receive ``instrument``'s ticks (``on_tick``), now and after reconnects.

        Starts from the latest value, or after tick id ``after``; after a
        reconnect it resumes after the last tick id seen. Fires with the
        ``subscribed`` frame.
        """
        return self.market.watch(instrument, after)

    def unwatch(self, instrument: str) -> None:
        """Stop receiving ``instrument``'s ticks."""
        self.market.unwatch(instrument)

    def when_connected(self) -> Deferred[dict[str, Any]]:
        """Fire with the next (or current) ``welcome`` frame."""
        d: Deferred[dict[str, Any]] = Deferred()
        if self.welcome is not None:
            d.callback(self.welcome)
        else:
            self._connected_waiters.append(d)
        return d

    def switch_network(self, bind_address: str | None) -> None:
        """Act as a device whose network changed: the old link goes silent, unclosed.

        The old TCP connection is left open but no longer read (as a dead Wi-Fi
        link would be); a new one is made at once from ``bind_address``.
        """
        self.bind_address = bind_address
        link, self._link = self._link, None
        self.welcome = None
        for old in (link, self.move.reset()):
            if old is not None:
                old.owner = None
                # Stop reading: an abandoned link must not hand over more frames.
                cast(IPushProducer, old.transport).pauseProducing()
                self._abandoned.append(old)
        self._connect()

    @property
    def unacknowledged(self) -> int:
        """How many sends wait for the gateway's acknowledgement."""
        return len(self.outbox)

    # Connection lifecycle

    def _connect(self) -> WebSocketClientFactory | None:
        self._reconnect_call = None
        if not self._running:
            return None
        token = self._token() if callable(self._token) else self._token
        query = {"token": token, "session": self.session}
        if self.last_id:
            query["after"] = self.last_id
        if self.last_broadcast_id:
            query["broadcast_after"] = self.last_broadcast_id
        seen = self.groups.positions()
        if seen:
            query["group_after"] = json.dumps(seen, separators=(",", ":"))
        url = f"{self.url}?{urlencode(query)}"
        parsed = urlparse(self.url)
        if parsed.hostname is None:
            raise ValueError(f"gateway URL without a host: {self.url}")
        factory = WebSocketClientFactory(url)
        factory.protocol = _ClientProtocol
        factory.owner = self  # type: ignore[attr-defined]
        factory.setProtocolOptions(
            autoPingInterval=self._ping[0],
            autoPingTimeout=self._ping[1],
            # Autobahn's 5 s default gives up on handshakes that a node under
            # a reconnect storm still completes; that abandoned attempt's
            # claim can then land after the next attempt's and close it with
            # 4001, which stops the client. Known shortcoming: a handshake
            # slower than this can still lose that race (stops the client).
            openHandshakeTimeout=30,
        )
        bind = (self.bind_address, 0) if self.bind_address else None
        endpoint = TCP4ClientEndpoint(
            self._reactor,
            parsed.hostname,
            parsed.port or 80,
            timeout=10,
            bindAddress=bind,
        )
        d = endpoint.connect(factory)
        d.addErrback(self._connect_failed, factory)
        return factory

    def _connect_failed(self, reason: Any, factory: WebSocketClientFactory) -> None:
        self.log.info("Connect failed: {error}", error=reason.getErrorMessage())
        if factory is self.move.attempt:
            self._move_failed(None, reason.getErrorMessage())
            return
        self._schedule_reconnect(self.backoff.next_delay(self._rng))

    def _schedule_reconnect(self, delay: float) -> None:
        if self._running and self._reconnect_call is None:
            self._reconnect_call = self._reactor.callLater(delay, self._connect)

    def _opened(self, link: _ClientProtocol) -> None:
        self.stats.connects += 1
        if not self.move.opened(link):
            self._link = link

    def _closed(
        self, link: _ClientProtocol, code: int | None, reason: str | None
    ) -> None:
        if code is not None:
            self.stats.closes[code] = self.stats.closes.get(code, 0) + 1
        if link in self._abandoned:
            self._abandoned.remove(link)
            self.move.forget(link)
            return
        if self.move.owns(link):
            self._move_failed(code, reason)
            return
        if link is not self._link and self._link is not None:
            return
        if link is self.move.source:
            self._link = None
            self.welcome = None
            if self.move.source_closed():
                # The node let go of the old link (4001 from this client's own
                # new claim, or 1012): the new one is on its way.
                return
            # Between two attempts: reconnect now, like after a 1012.
            code = wire.CLOSE_RESTARTING
        self._lost(code, reason)

    def _move_failed(self, code: int | None, reason: str | None) -> None:
        # The move's new connection failed before its welcome. While the old
        # link is open, try again after a backoff (it keeps its sends);
        # without it, this is an ordinary lost connection.
        if self._link is not None:
            if code in STOP_CODES:
                self.move.give_up()
            else:
                self.move.failed(self.backoff.next_delay(self._rng))
            return
        self.move.give_up()
        self._lost(code, reason)

    def _lost(self, code: int | None, reason: str | None) -> None:
        self._link = None
        self.welcome = None
        if not self._running:
            return
        if self.on_disconnected is not None:
            self.on_disconnected(code, reason)
        if code in STOP_CODES:
            self._running = False
            if self.on_stopped is not None:
                self.on_stopped(code, reason)
            return
        if code in NOW_CODES:
            self._schedule_reconnect(self._rng.uniform(0, 1.0))
        else:
            self._schedule_reconnect(self.backoff.next_delay(self._rng))

    # Frames

    def _frame(self, link: _ClientProtocol, frame: dict[str, Any]) -> None:
        if self.move.holds_back(link, frame):
            return
        if self.market.on_frame(frame):
            return
        kind = frame.get("type")
        if self.welcome is not None and self.groups.on_frame(frame):
            if kind == "group_message":
                self._schedule_ack()
            return
        if kind == "welcome":
            self._welcomed(link, frame)
        elif kind == "message":
            self._message(frame)
        elif kind == "broadcast":
            self._broadcast(frame)
        elif kind == "ack":
            self.outbox.acknowledged(frame)
        elif kind == "reconnect":
            self._asked_to_move(link, frame)
        elif kind == "error" and not self.outbox.refused(frame):
            self.log.warn(
                "Gateway error: {code} {message}",
                code=frame.get("code"),
                message=frame.get("message"),
            )

    def _asked_to_move(self, link: _ClientProtocol, frame: dict[str, Any]) -> None:
        if link is self._link and self.welcome is not None and self._running:
            if self.move.begin(link):
                self.log.info(
                    "Moving to a new connection: {reason}", reason=frame.get("reason")
                )

    def _welcomed(self, link: _ClientProtocol, frame: dict[str, Any]) -> None:
        if self.move.owns(link):
            old = self.move.completed()
            self._link = link
            self.stats.moves += 1
            if old is not None and old is not link:
                # Its node closes it (4001) once it sees the new claim.
                old.owner = None
                self._abandoned.append(old)
                self.move.retire(old, lambda: old.sendClose(wire.CLOSE_NORMAL))
        self.welcome = frame
        start = frame.get("broadcast_after")
        if self.last_broadcast_id is None and isinstance(start, str):
            # Where this session's broadcasts began: resume from there next time.
            self.last_broadcast_id = self._broadcast_acked_upto = start
        self.backoff.reset()
        self.outbox.send_all_again()
        self.groups.welcomed(frame)
        self.market.resubscribe()
        if self.on_welcome is not None:
            self.on_welcome(frame)
        if frame.get("truncated") and self.on_resync is not None:
            self.on_resync(frame)
        waiters, self._connected_waiters = self._connected_waiters, []
        for d in waiters:
            d.callback(frame)

    def _message(self, frame: dict[str, Any]) -> None:
        entry_id = frame["id"]
        if self.last_id and wire.stream_id_key(entry_id) <= wire.stream_id_key(
            self.last_id
        ):
            self.stats.duplicates_dropped += 1
            return
        self.last_id = entry_id
        self.stats.messages += 1
        self._schedule_ack()
        self._on_message(frame)

    def _schedule_ack(self) -> None:
        if self._ack_call is None:
            self._ack_call = self._reactor.callLater(
                self._ack_interval, self._flush_ack
            )

    def _broadcast(self, frame: dict[str, Any]) -> None:
        entry_id = frame["id"]
        if self.last_broadcast_id and wire.stream_id_key(
            entry_id
        ) <= wire.stream_id_key(self.last_broadcast_id):
            self.stats.broadcast_duplicates_dropped += 1
            return
        self.last_broadcast_id = entry_id
        self.stats.broadcasts += 1
        self._schedule_ack()
        if self.on_broadcast is not None:
            self.on_broadcast(frame)

    def _flush_ack(self) -> None:
        self._ack_call = None
        if self._link is None:
            return
        if self.last_id and self.last_id != self._acked_upto:
            if self._write(self._link, {"type": "ack", "upto": self.last_id}):
                self._acked_upto = self.last_id
        upto = self.last_broadcast_id
        if upto and upto != self._broadcast_acked_upto:
            frame = {"type": "ack", "broadcast": True, "upto": upto}
            if self._write(self._link, frame):
                self._broadcast_acked_upto = upto
        if self.welcome is not None:
            # A group ack lost with its link only delays the position stored.
            for ack in self.groups.acks():
                self._write(self._link, ack)

    def _write_current(self, frame: dict[str, Any]) -> bool:
        """Write ``frame`` on the current link once welcomed; False otherwise."""
        if self._link is None or self.welcome is None:
            return False
        return self._write(self._link, frame)

    def _tick(self, frame: dict[str, Any]) -> None:
        if self.on_tick is not None:
            self.on_tick(frame)

    def _write(self, link: _ClientProtocol, frame: dict[str, Any]) -> bool:
        """Write ``frame`` if the link is open; False if it is closing or closed.

        A frame not written is not lost: sends stay pending until acknowledged
        and go again on the next welcome, and the ack cursor is sent again.
        """
        if link.state != WebSocketProtocol.STATE_OPEN:
            return False
        link.sendMessage(
            json.dumps(frame, separators=(",", ":")).encode(), isBinary=False
        )
        return True
