"""The Autobahn WebSocket protocol and factory that front the gateway.

The protocol only authenticates and translates between WebSocket events and a
:class:`~wsha.client_session.ClientSession`; the contract lives there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.util import encode_truncate
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.interfaces import IPushProducer, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsha import connection_events, wire
from wsha.admission import AdmissionGate
from wsha.auth import AuthError, TokenVerifier
from wsha.client_session import ClientSession
from wsha.gateway import Gateway

WS_PATH = "/ws"

# Module-level on purpose: Autobahn's protocol classes use their own ``log``
# attribute for per-frame debug events, which must stay with txaio's logger.
log = Logger()


def _first(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


def bearer_token(request: ConnectionRequest) -> str | None:
    """The token from ``?token=`` or from an ``Authorization: Bearer`` header."""
    token = _first(request.params, "token")
    if token:
        return token
    header = str(request.headers.get("authorization", ""))
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


class GatewayServerProtocol(WebSocketServerProtocol):
    """One client's WebSocket: authenticates on open, then hands frames over."""

    factory: GatewayServerFactory

    client: ClientSession | None = None
    _refusal: tuple[int, str] | None = None
    opened_at: float | None = None

    def connectionMade(self) -> None:
        """Start the handshake with Nagle's algorithm off (TCP_NODELAY), and
        count the connection (a draining node waits until none is open).

        Autobahn sets TCP_NODELAY before it copies ``tcpNoDelay`` from the
        factory, so its attempt fails quietly and Nagle stays on: a frame
        written while an earlier one is unacknowledged then waits for the
        client's delayed ACK (up to 40 ms on Linux).
        """
        self.factory.connections += 1
        super().connectionMade()
        transport = self.transport
        if ITCPTransport.providedBy(transport):
            transport.setTcpNoDelay(self.factory.tcpNoDelay)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Stop counting the connection."""
        self.factory.connections -= 1
        super().connectionLost(reason)

    def onConnect(self, request: ConnectionRequest) -> None:
        """Check the path and the request; authentication failures close after open.

        A browser cannot read an HTTP status from a failed handshake, so a bad
        token is reported with close code 4401 once the socket is open.
        """
        if request.path != WS_PATH:
            raise ConnectionDeny(404, f"no WebSocket endpoint at {request.path}")
        if not self.factory.accepting:
            self._refusal = (wire.CLOSE_RESTARTING, "node is draining")
            return
        if not self.factory.store_available():
            self._refusal = (wire.CLOSE_TRY_LATER, "session store unavailable")
            return
        admission = self.factory.admission
        if admission is not None and not admission.admit():
            self._refusal = (wire.CLOSE_TRY_LATER, "too many new connections")
            return
        try:
            identity = self.factory.verifier.identify(bearer_token(request))
        except AuthError as e:
            self._refusal = (wire.CLOSE_UNAUTHORIZED, str(e))
            return

        session = _first(request.params, "session")
        after = _first(request.params, "after")
        broadcast_after = _first(request.params, "broadcast_after")
        group_after: dict[str, str] = {}
        try:
            group_after = wire.parse_group_positions(
                _first(request.params, "group_after") or "{}"
            )
        except ValueError as e:
            self._refusal = (wire.CLOSE_POLICY, str(e))
            return
        if session is None or not wire.is_valid_user_id(session):
            self._refusal = (
                wire.CLOSE_POLICY,
                "query parameter 'session' missing or invalid",
            )
        elif after is not None and not wire.is_valid_stream_id(after):
            self._refusal = (
                wire.CLOSE_POLICY,
                "query parameter 'after' is not an inbox id",
            )
        elif broadcast_after is not None and not wire.is_valid_stream_id(
            broadcast_after
        ):
            self._refusal = (
                wire.CLOSE_POLICY,
                "query parameter 'broadcast_after' is not a broadcast id",
            )
        else:
            self.client = ClientSession(
                self.factory.gateway,
                self,
                identity.user,
                session,
                after,
                tags=identity.tags,
                broadcast_after=broadcast_after,
                group_after=group_after,
            )
        return

    def onOpen(self) -> None:
        """Refuse with the close code chosen in onConnect, or start the session."""
        self.opened_at = connection_events.opened(self.factory.gateway.clock)
        if self._refusal is not None:
            code, reason = self._refusal
            connection_events.refused(code)
            # A storm or an outage refuses many: those are logged once, elsewhere.
            emit = log.debug if code == wire.CLOSE_TRY_LATER else log.info
            emit("Refused {peer}: {reason}", peer=self.peer, reason=reason, code=code)
            self.close(code, reason)
            return
        assert self.client is not None
        self.client.start().addErrback(self._start_failed)

    def _start_failed(self, reason: Any) -> None:
        # A session that cannot start must not stay open, silent, and online.
        log.failure("Session start failed on {peer}", reason, peer=self.peer)
        self.close(wire.CLOSE_SERVER_ERROR, "session could not start")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """Pass a text frame to the session; binary frames get an error."""
        if self.client is None:
            return
        if isBinary:
            self.client.on_binary()
        else:
            self.client.on_text(payload.decode("utf-8"))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """Release the session (fenced: a newer owner is never touched)."""
        connection_events.closed(self, self.factory.gateway.clock)
        if self.client is not None:
            self.client.connection_lost()

    def send_frame(self, payload: bytes) -> None:
        """Send one text frame (the :class:`~wsha.client_session.Link` side).

        Once the closing handshake has begun or the connection was dropped,
        the frame is discarded: Autobahn would raise, and the session only
        learns it is closed in ``onClose``. Nothing is lost by that; what was
        not delivered stays in the inbox or history the client resumes from.
        """
        if self.state == self.STATE_OPEN:
            self.sendMessage(payload, isBinary=False)

    def register_producer(self, producer: IPushProducer) -> None:
        """Register ``producer`` to be paused while the transport's buffer is full."""
        self.registerProducer(producer, True)

    def dropConnection(self, abort: bool = False) -> None:
        """Drop the TCP connection: with a FIN, not a reset, once the closing
        handshake has completed.

        Autobahn resets a server's connection as soon as the client answered
        its close frame. A balancer in between counts each reset as a server
        error (HAProxy: termination state ``SD``, the backend's ``eresp``), so
        every takeover (4001) and every drain (1012) would look like a node
        failing. A close that was not clean (a timeout, a protocol error) is
        still reset.
        """
        super().dropConnection(abort=abort and not self.wasClean)

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake with ``code``.

        Autobahn's public ``sendClose`` accepts only 1000 and 3000-4999, but
        the contract also uses the standard codes 1008, 1009, 1012 and 1013,
        so the close frame is sent through ``sendCloseFrame``, which checks
        nothing; the reason is cut to the 123 bytes a close frame can carry.
        """
        self.sendCloseFrame(
            code=code, reasonUtf8=encode_truncate(reason, 123), isReply=False
        )


class GatewayServerFactory(WebSocketServerFactory):
    """Builds :class:`GatewayServerProtocol` for the gateway's listener.

    :param gateway: the node's routing core.
    :param verifier: checks connection tokens.
    :param max_message_bytes: frames or messages above this close with 1009.
    :param ping_interval: seconds between server pings; 0 disables them.
    :param ping_timeout: seconds to wait for a pong before dropping the link.
    :param admission: limits the rate of new connections (none by default).
    :param store_available: says whether Redis can serve new sessions now.
    """

    protocol = GatewayServerProtocol  # type: ignore[assignment]

    def __init__(
        self,
        gateway: Gateway,
        verifier: TokenVerifier,
        max_message_bytes: int = 128 * 1024,
        ping_interval: float = 20.0,
        ping_timeout: float = 10.0,
        admission: AdmissionGate | None = None,
        store_available: Callable[[], bool] = lambda: True,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.gateway = gateway
        self.verifier = verifier
        self.accepting = True
        # TCP connections open now, WebSocket handshake or not.
        self.connections = 0
        self.admission = admission
        self.store_available = store_available
        self.setProtocolOptions(
            maxMessagePayloadSize=max_message_bytes,
            maxFramePayloadSize=max_message_bytes,
            autoPingInterval=ping_interval,
            autoPingTimeout=ping_timeout,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=5,
            # Protocol errors (a frame over the limit, bad UTF-8) must reach
            # the client as a close code (1009, 1007), not a bare TCP drop.
            failByDrop=False,
        )
