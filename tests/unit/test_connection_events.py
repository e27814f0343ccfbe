"""Unit tests for :mod:`wsha.connection_events`: one log line and the metrics
of each connection's open, takeover and close."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.fakes import GatewayHarness
from tests.unit.metric_values import Delta
from wsha import connection_events, wire
from wsha.client_session import ClientSession


@dataclass
class FakeSocket:
    """The Autobahn state :func:`connection_events.closed` reads."""

    client: ClientSession | None
    opened_at: float | None = 100.0
    closedByMe: bool = False
    droppedByMe: bool = False
    localCloseCode: int | None = None
    localCloseReason: bytes | None = None
    remoteCloseCode: int | None = None
    remoteCloseReason: str | None = None
    wasNotCleanReason: str | None = None
    peer: str = "tcp4:127.0.0.1:5000"


def connection_events_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events of the ``wsha.connections`` namespace."""
    return [e for e in events if e.get("log_namespace") == "wsha.connections"]


class ConnectionEventTests(SynchronousTestCase):
    """Open, takeover and close lines carry user, session, node and why."""

    def setUp(self) -> None:
        self.harness = GatewayHarness("gw-7")

    def test_open_logs_the_session_and_counts_its_resume(self) -> None:
        """The welcome is followed by one info line naming the session, and the
        resume is counted by outcome with the backlog it replays."""
        truncated = Delta(
            "wsha_resumes_total", **{"class": "direct", "outcome": "truncated"}
        )
        replayed = Delta("wsha_replayed_total")
        with capturedLogs() as events:
            self.harness.online(9, resumed=True, trimmed=True, pending=4)
        (opened,) = connection_events_of(events)
        self.assertEqual(
            {k: opened[k] for k in ("connection", "user", "session", "node", "epoch")},
            {
                "connection": "open",
                "user": "alice",
                "session": "phone",
                "node": "gw-7",
                "epoch": 9,
            },
        )
        self.assertEqual(opened["log_level"].name, "info")
        self.assertEqual((truncated(), replayed()), (1, 4))

    def test_fresh_and_honoured_resumes(self) -> None:
        """A first connection counts as fresh, a resumed one as honoured."""
        fresh = Delta("wsha_resumes_total", **{"class": "direct", "outcome": "fresh"})
        honoured = Delta(
            "wsha_resumes_total", **{"class": "direct", "outcome": "honoured"}
        )
        self.harness.online(1, user="u1")
        self.harness.online(2, user="u2", resumed=True)
        self.assertEqual((fresh(), honoured()), (1, 1))

    def test_takeover_logs_and_counts(self) -> None:
        """A newer claim closes the old connection with 4001, one takeover line
        naming both epochs, and one count."""
        takeovers = Delta("wsha_takeovers_total")
        client, link = self.harness.online(3)
        with capturedLogs() as events:
            client.take_over(5)
        (event,) = connection_events_of(events)
        self.assertEqual(
            (event["connection"], event["epoch"], event["new_epoch"], event["node"]),
            ("takeover", 3, 5, "gw-7"),
        )
        self.assertEqual(link.closes[0][0], wire.CLOSE_TAKEN_OVER)
        self.assertEqual(takeovers(), 1)

    def test_close_by_server_logs_code_reason_and_who(self) -> None:
        """A close the server began is logged with its code and reason, by
        ``server``, and counted by code."""
        client, _ = self.harness.online(3)
        counted = Delta("wsha_connections_closed_total", code="4001", by="server")
        socket = FakeSocket(
            client,
            closedByMe=True,
            localCloseCode=4001,
            localCloseReason=b"session taken over",
            remoteCloseCode=4001,
        )
        self.harness.clock.advance(2.5)
        with capturedLogs() as events:
            connection_events.closed(socket, self.harness.clock)
        (event,) = connection_events_of(events)
        self.assertEqual(
            {k: event[k] for k in ("connection", "user", "session", "node", "by")},
            {
                "connection": "close",
                "user": "alice",
                "session": "phone",
                "node": "gw-7",
                "by": "server",
            },
        )
        self.assertEqual((event["code"], event["reason"]), (4001, "session taken over"))
        self.assertEqual(counted(), 1)

    def test_close_by_client_and_by_network(self) -> None:
        """A client's close frame is counted by its code, by ``client``; a
        connection lost without one as 1006, by ``network``; a client's own
        code outside the protocol's table counts as ``other``."""
        client, _ = self.harness.online(3)
        by_client = Delta("wsha_connections_closed_total", code="1000", by="client")
        lost = Delta("wsha_connections_closed_total", code="1006", by="network")
        other = Delta("wsha_connections_closed_total", code="other", by="client")
        clock = self.harness.clock
        connection_events.closed(FakeSocket(client, remoteCloseCode=1000), clock)
        connection_events.closed(FakeSocket(client, wasNotCleanReason="reset"), clock)
        connection_events.closed(FakeSocket(client, remoteCloseCode=3999), clock)
        self.assertEqual((by_client(), lost(), other()), (1, 1, 1))

    def test_connection_that_never_opened_is_not_counted(self) -> None:
        """A failed handshake (no onOpen) is neither counted nor logged."""
        closed = Delta("wsha_connections_closed_total", code="1006", by="network")
        with capturedLogs() as events:
            connection_events.closed(
                FakeSocket(None, opened_at=None), self.harness.clock
            )
        self.assertEqual((closed(), connection_events_of(events)), (0, []))

    def test_close_before_the_session_opened_is_debug(self) -> None:
        """A connection whose claim never came back is logged at debug only."""
        client, _, _ = self.harness.connect()
        with capturedLogs() as events:
            connection_events.closed(
                FakeSocket(client, remoteCloseCode=1000), self.harness.clock
            )
        (event,) = connection_events_of(events)
        self.assertEqual(event["log_level"].name, "debug")

    def test_open_and_refusal_counts(self) -> None:
        """Each handshake counts as opened; a refusal also by its close code."""
        opened = Delta("wsha_connections_opened_total")
        refused = Delta("wsha_connections_refused_total", code="1012")
        connection_events.opened(self.harness.clock)
        connection_events.refused(wire.CLOSE_RESTARTING)
        self.assertEqual((opened(), refused()), (1, 1))
