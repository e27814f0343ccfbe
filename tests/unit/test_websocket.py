"""Unit tests for :mod:`wsha.protocols.websocket`: tokens and handshake decisions."""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.unit.fakes import GatewayHarness
from wsha import wire
from wsha.admission import AdmissionGate
from wsha.auth import TokenVerifier, mint_token
from wsha.protocols.websocket import (
    GatewayServerFactory,
    GatewayServerProtocol,
    bearer_token,
)

SECRET = "websocket-unit-secret-" + "x" * 32


def connection_request(
    path: str = "/ws",
    params: dict[str, list[str]] | None = None,
    headers: dict[str, str] | None = None,
) -> ConnectionRequest:
    """A handshake request as Autobahn gives onConnect (header names lowercased)."""
    return ConnectionRequest(
        "tcp:127.0.0.1:50000",
        headers or {},
        "127.0.0.1:8080",
        path,
        params or {},
        13,
        None,
        [],
        [],
    )


class StubFactory:
    """What GatewayServerProtocol reads from its factory."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.verifier = TokenVerifier(SECRET)
        self.accepting = True
        self.redis_up = True
        self.admission: AdmissionGate | None = None

    def store_available(self) -> bool:
        """Whether the (pretend) session store is reachable."""
        return self.redis_up


class BearerTokenTests(SynchronousTestCase):
    """Where bearer_token() finds the token."""

    def test_query_parameter(self) -> None:
        """``?token=`` is used, and wins over the header."""
        request = connection_request(
            params={"token": ["q"]}, headers={"authorization": "Bearer h"}
        )
        self.assertEqual(bearer_token(request), "q")

    def test_authorization_header(self) -> None:
        """An ``Authorization: Bearer`` header is used, any case of the scheme."""
        for header in ("Bearer abc", "bearer abc", "BEARER  abc "):
            request = connection_request(headers={"authorization": header})
            self.assertEqual(bearer_token(request), "abc")

    def test_no_token(self) -> None:
        """Without a usable query parameter or header there is no token."""
        for headers in (
            {},
            {"authorization": "Basic abc"},
            {"authorization": "Bearer "},
        ):
            request = connection_request(params={"token": [""]}, headers=headers)
            self.assertIsNone(bearer_token(request))


class OnConnectTests(SynchronousTestCase):
    """The handshake's decisions: deny, refuse after open, or accept."""

    def setUp(self) -> None:
        self.harness = GatewayHarness()
        self.factory = StubFactory(self.harness.gateway)
        self.closes: list[tuple[int, str]] = []
        self.protocol = self.new_protocol()

    def new_protocol(self, peer: str = "tcp:127.0.0.1:50000") -> GatewayServerProtocol:
        """A protocol on the stub factory whose close frames land in ``closes``."""
        protocol = GatewayServerProtocol()
        protocol.factory = self.factory
        # Autobahn's own frame writer is the boundary: its public sendClose
        # rejects 1008/1012, so the protocol must go through sendCloseFrame.
        protocol.sendCloseFrame = lambda code, reasonUtf8, isReply: self.closes.append(
            (code, reasonUtf8.decode("utf-8"))
        )
        protocol.peer = peer
        # The session registers its output gate on the transport when it opens.
        protocol.transport = StringTransport()
        return protocol

    def connect(self, path: str = "/ws", **params: str) -> None:
        """Run onConnect with ``params`` as the query."""
        query = {name: [value] for name, value in params.items()}
        self.protocol.onConnect(connection_request(path, query))

    def token(self, user: str = "alice") -> str:
        """A valid token for ``user``."""
        return mint_token(SECRET, user)

    def test_wrong_path_is_denied_with_404(self) -> None:
        """Any path but /ws is refused at the handshake with HTTP 404."""
        with self.assertRaises(ConnectionDeny) as raised:
            self.connect("/other", token=self.token(), session="s")
        self.assertEqual(raised.exception.code, 404)

    def test_missing_token_closes_with_4401_after_open(self) -> None:
        """Without a token the socket opens, then closes with 4401."""
        self.connect(session="s")
        self.assertIsNone(self.protocol.client)
        self.protocol.onOpen()
        self.assertEqual(self.closes[0][0], wire.CLOSE_UNAUTHORIZED)
        self.assertEqual(self.harness.registry.claims, [])

    def test_bad_token_closes_with_4401(self) -> None:
        """A token signed with another key is refused with 4401."""
        self.connect(token=mint_token("other-" + "y" * 40, "alice"), session="s")
        self.protocol.onOpen()
        self.assertEqual(self.closes[0][0], wire.CLOSE_UNAUTHORIZED)

    def test_bad_session_or_after_closes_with_1008(self) -> None:
        """A missing or invalid session, or a bad after, is refused with 1008."""
        for params in ({}, {"session": "a b"}, {"session": "s", "after": "yesterday"}):
            self.closes.clear()
            self.protocol._refusal = None
            self.connect(token=self.token(), **params)
            self.protocol.onOpen()
            self.assertEqual(self.closes[0][0], wire.CLOSE_POLICY)
        self.assertEqual(self.harness.registry.claims, [])

    def test_draining_node_refuses_with_1012(self) -> None:
        """A node that stopped accepting closes new sockets with 1012."""
        self.factory.accepting = False
        self.connect(token=self.token(), session="s")
        self.protocol.onOpen()
        self.assertEqual(self.closes[0][0], wire.CLOSE_RESTARTING)

    def test_store_down_refuses_with_1013_after_open(self) -> None:
        """While Redis is unavailable a new socket opens, then closes with 1013,
        and nothing is asked of the session store."""
        self.factory.redis_up = False
        self.connect(token=self.token(), session="s")
        self.protocol.onOpen()
        self.assertEqual(
            self.closes, [(wire.CLOSE_TRY_LATER, "session store unavailable")]
        )
        self.assertEqual(self.harness.registry.claims, [])

    def test_draining_wins_over_store_down(self) -> None:
        """A draining node says 1012 (go elsewhere now) even while Redis is down."""
        self.factory.accepting = False
        self.factory.redis_up = False
        self.connect(token=self.token(), session="s")
        self.protocol.onOpen()
        self.assertEqual(self.closes[0][0], wire.CLOSE_RESTARTING)

    def test_admission_limit_refuses_with_1013(self) -> None:
        """Beyond the admission gate's burst a new socket closes with 1013; the
        ones within it start sessions."""
        self.factory.admission = AdmissionGate(rate=1.0, burst=1, clock=Clock())
        self.connect(token=self.token(), session="s1")
        self.protocol.onOpen()
        self.assertEqual(self.closes, [])

        second = self.new_protocol("tcp:127.0.0.1:50001")
        second.onConnect(
            connection_request(params={"token": [self.token()], "session": ["s2"]})
        )
        second.onOpen()

        self.assertEqual(
            self.closes, [(wire.CLOSE_TRY_LATER, "too many new connections")]
        )
        self.assertEqual(len(self.harness.registry.claims), 1)

    def test_store_down_costs_no_admission_token(self) -> None:
        """A socket refused because Redis is down does not spend the burst."""
        gate = AdmissionGate(rate=1.0, burst=1, clock=Clock())
        self.factory.admission = gate
        self.factory.redis_up = False
        self.connect(token=self.token(), session="s")
        self.assertTrue(gate.admit())

    def test_valid_request_starts_a_session(self) -> None:
        """A good token and session build a ClientSession that claims on open."""
        self.connect(token=self.token("alice"), session="tab-1", after="5-0")
        client = self.protocol.client
        assert client is not None
        self.assertEqual(
            (client.user, client.session, client.after), ("alice", "tab-1", "5-0")
        )
        self.assertEqual(self.harness.registry.claims, [])

        self.protocol.onOpen()

        self.assertEqual(self.closes, [])
        self.assertEqual(self.harness.registry.claims[0][0][:2], ("alice", "tab-1"))

    def test_close_hands_over_to_the_session(self) -> None:
        """onClose marks the session's connection lost."""
        self.connect(token=self.token(), session="s")
        self.protocol.onClose(True, 1000, None)
        assert self.protocol.client is not None
        self.assertTrue(self.protocol.client.closed)

    def test_broadcast_position_and_token_tags_reach_the_session(self) -> None:
        """``broadcast_after`` and the token's tags are handed to the session."""
        token = mint_token(SECRET, "alice", tags=["gold"])
        self.connect(token=token, session="s", broadcast_after="7-1")
        client = self.protocol.client
        assert client is not None
        self.assertEqual(
            (client.broadcast_after, client.tags), ("7-1", frozenset({"gold"}))
        )

    def test_bad_broadcast_position_closes_with_1008(self) -> None:
        """A ``broadcast_after`` that is not a history id is refused with 1008."""
        self.connect(token=self.token(), session="s", broadcast_after="latest")
        self.protocol.onOpen()
        self.assertEqual(self.closes[0][0], wire.CLOSE_POLICY)
        self.assertIsNone(self.protocol.client)


@implementer(ITCPTransport)
class NoDelayTransport(StringTransport):
    """A TCP transport stand-in that remembers the TCP_NODELAY setting."""

    no_delay: bool | None = None

    def setTcpNoDelay(self, enabled: bool) -> None:
        """Record the setting."""
        self.no_delay = enabled


class SocketOptionTests(SynchronousTestCase):
    """How a new connection's socket is set up."""

    def test_nagle_is_turned_off(self) -> None:
        """A new connection's socket gets TCP_NODELAY, so a small frame (an ack,
        a group message) leaves at once instead of waiting behind the
        client's delayed ACK of the frame before it."""
        factory = GatewayServerFactory(GatewayHarness().gateway, TokenVerifier(SECRET))
        factory.setProtocolOptions(openHandshakeTimeout=0)
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        transport = NoDelayTransport()

        protocol.makeConnection(transport)

        self.assertIs(transport.no_delay, True)


class SendFrameTests(SynchronousTestCase):
    """Frames the session writes to its connection."""

    def test_frames_after_the_close_began_are_dropped(self) -> None:
        """Between the start of a close (a takeover's 4001, a drain's 1012, a
        ping timeout's drop) and onClose, a frame for the client is dropped
        instead of raising into the caller, which may be the group fan-out
        looping over every local member."""
        protocol = GatewayServerProtocol()
        transport = StringTransport()
        protocol.transport = transport
        for state in (protocol.STATE_CLOSING, protocol.STATE_CLOSED):
            protocol.state = state
            protocol.send_frame(b'{"type":"group_message"}')

        self.assertEqual(transport.value(), b"")


class ConnectionCountTests(SynchronousTestCase):
    """The factory counts open connections, for a drain to wait on."""

    def test_connections_are_counted_until_lost(self) -> None:
        """Each TCP connection counts from connectionMade to connectionLost,
        whether or not it ever became a session."""
        # Autobahn's own handlers (handshake timers on the global reactor)
        # are not what is tested here.
        self.patch(WebSocketServerProtocol, "connectionMade", lambda self: None)
        self.patch(WebSocketServerProtocol, "connectionLost", lambda self, r: None)
        factory = GatewayServerFactory(GatewayHarness().gateway, TokenVerifier(SECRET))
        first, second = GatewayServerProtocol(), GatewayServerProtocol()
        for protocol in (first, second):
            protocol.factory = factory
            protocol.connectionMade()
        self.assertEqual(factory.connections, 2)

        first.connectionLost(Failure(ConnectionDone()))

        self.assertEqual(factory.connections, 1)


class DropTests(SynchronousTestCase):
    """How the TCP connection ends once the WebSocket is closed."""

    def setUp(self) -> None:
        self.drops: list[bool] = []
        self.patch(
            WebSocketServerProtocol,
            "dropConnection",
            lambda protocol, abort=False: self.drops.append(abort),
        )
        self.protocol = GatewayServerProtocol()

    def test_clean_close_ends_with_a_fin(self) -> None:
        """After a completed closing handshake the connection is not reset,
        which a balancer would count as a server error."""
        self.protocol.wasClean = True
        self.protocol.dropConnection(abort=True)
        self.assertEqual(self.drops, [False])

    def test_failed_close_is_still_reset(self) -> None:
        """A connection dropped on a timeout or protocol error is reset."""
        self.protocol.wasClean = False
        self.protocol.dropConnection(abort=True)
        self.assertEqual(self.drops, [True])
