"""``POST /v1/admin/move`` and ``/v1/admin/kick``, the mover and the kick notice."""

from __future__ import annotations

import json
import random
from io import BytesIO
from typing import Any

from twisted.internet.defer import succeed
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from tests.unit.fakes import FakeLink, GatewayHarness
from wsha import control, topics, wire
from wsha.client_session import ClientSession
from wsha.control_admin import admin_commands
from wsha.gateway import KICKED
from wsha.session_mover import MOVED, SessionMover, share_of
from wsha.sessions import SessionInfo

TOKEN = "control-secret"


def info(session: str, node: str, online: bool = True, epoch: int = 5) -> SessionInfo:
    """A stored session of a user as the registry's lookup returns it."""
    return SessionInfo(session, node if online else "", online, str(epoch), "0-0", 0)


class AdminTests(SynchronousTestCase):
    """The operator commands on a gateway with fakes behind it."""

    def setUp(self) -> None:
        self.harness = GatewayHarness()
        self.gateway = self.harness.gateway
        self.clock = self.harness.clock
        self.mover = SessionMover(self.gateway, self.clock, random.Random(7))
        self.site = control.control_site(
            self.gateway,
            lambda: succeed((True, {})),
            TOKEN,
            commands={b"admin": admin_commands(self.gateway, self.mover, TOKEN)},
        )

    def post(self, path: bytes, body: Any, token: str | None = TOKEN) -> DummyRequest:
        """POST ``body`` (JSON, or raw bytes) to ``path``."""
        request = DummyRequest(path.lstrip(b"/").split(b"/"))
        request.method = b"POST"
        request._disconnected = False
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        request.content = BytesIO(raw)
        if token is not None:
            request.requestHeaders.addRawHeader(b"authorization", f"Bearer {token}")
        request.render(getChildForRequest(self.site.resource, request))
        return request

    def answer(self, request: DummyRequest) -> tuple[int, dict[str, Any]]:
        """The finished request's status and JSON body."""
        self.assertEqual(request.finished, 1)
        return request.responseCode, json.loads(b"".join(request.written))

    def sessions(self, count: int) -> list[tuple[ClientSession, FakeLink]]:
        """``count`` sessions online on this node, one per user."""
        return [self.harness.online(epoch=1, user=f"u{i}") for i in range(count)]

    # Move

    def test_move_closes_the_share_spread_over_the_window(self) -> None:
        """A quarter of 8 sessions (2) close with 1012, one at once and one half-way
        through the 10 s window; the others stay."""
        links = [link for _, link in self.sessions(8)]

        status, body = self.answer(
            self.post(b"/v1/admin/move", {"share": 0.25, "over_s": 10})
        )
        self.assertEqual(status, 202)
        self.assertEqual(
            body,
            {
                "node": "gw-1",
                "sessions": 8,
                "moving": 2,
                "over_s": 10.0,
                "cancelled": 0,
            },
        )
        self.clock.advance(0)
        self.assertEqual(sum(1 for link in links if link.closes), 1)
        self.clock.advance(4.9)
        self.assertEqual(sum(1 for link in links if link.closes), 1)
        self.clock.advance(0.1)
        closes = [link.closes for link in links if link.closes]
        self.assertEqual(closes, [[(wire.CLOSE_RESTARTING, MOVED)]] * 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_move_skips_sessions_that_left_meanwhile(self) -> None:
        """A chosen session that disconnected before its turn is not closed again."""
        online = self.sessions(2)
        self.post(b"/v1/admin/move", {"share": 1, "over_s": 10})
        self.clock.advance(0)
        for client, link in online:
            if not link.closes:
                client.connection_lost()
        self.clock.advance(10)
        self.assertEqual(sum(len(link.closes) for _, link in online), 1)

    def test_a_new_move_replaces_the_one_in_progress(self) -> None:
        """Share 0 drops the closes still pending and closes nothing more."""
        links = [link for _, link in self.sessions(4)]
        self.post(b"/v1/admin/move", {"share": 1, "over_s": 40})
        self.clock.advance(0)

        _, body = self.answer(self.post(b"/v1/admin/move", {"share": 0}))
        self.assertEqual((body["moving"], body["cancelled"]), (0, 3))
        self.clock.advance(60)
        self.assertEqual(sum(len(link.closes) for link in links), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_move_refuses_bad_shares_and_windows(self) -> None:
        """share outside 0-1 or not a number, over_s outside 0-3600: 400."""
        for body in (
            {},
            {"share": 1.5},
            {"share": True},
            {"share": "0.5"},
            {"share": 0.5, "over_s": -1},
            {"share": 0.5, "over_s": 7200},
        ):
            status, answer = self.answer(self.post(b"/v1/admin/move", body))
            self.assertEqual((status, answer["error"]), (400, "bad_frame"), body)

    def test_admin_commands_need_the_token(self) -> None:
        """Without the control token: 401, and nothing moves."""
        _, link = self.harness.online()
        status, _ = self.answer(self.post(b"/v1/admin/move", {"share": 1}, token=None))
        self.assertEqual(status, 401)
        self.assertEqual(link.closes, [])

    def test_share_rounds_but_never_to_none(self) -> None:
        """A positive share of at least one session moves at least one."""
        self.assertEqual(
            [share_of(10, 0.25), share_of(3, 0.01), share_of(0, 1), share_of(5, 0)],
            [2, 1, 0, 0],
        )

    # Kick

    def test_kick_closes_a_local_session_with_1008(self) -> None:
        """A session held here is closed at once with 1008 'kicked by operator'."""
        _, link = self.harness.online(epoch=5)
        request = self.post(b"/v1/admin/kick", {"user": "alice"})
        self.harness.registry.lookups[-1][1].callback([info("phone", "gw-1")])

        self.assertEqual(
            self.answer(request),
            (
                200,
                {
                    "user": "alice",
                    "kicked": [{"session": "phone", "node": "gw-1", "epoch": 5}],
                },
            ),
        )
        self.assertEqual(link.closes, [(wire.CLOSE_POLICY, KICKED)])

    def test_kick_tells_the_node_holding_a_remote_session(self) -> None:
        """A session held by another node gets a kick notice on that node's topic
        with the epoch seen; offline sessions are left out."""
        request = self.post(b"/v1/admin/kick", {"user": "alice"})
        self.harness.registry.lookups[-1][1].callback(
            [info("phone", "gw-2", epoch=9), info("tablet", "", online=False)]
        )

        _, body = self.answer(request)
        self.assertEqual(
            body["kicked"], [{"session": "phone", "node": "gw-2", "epoch": 9}]
        )
        self.assertEqual(
            self.harness.bus.sent,
            [
                (
                    "gw-2",
                    {"kind": "kick", "user": "alice", "session": "phone", "epoch": 9},
                    b"alice",
                )
            ],
        )

    def test_kick_of_an_unknown_session_is_404(self) -> None:
        """Naming a session the user does not have answers 404."""
        request = self.post(b"/v1/admin/kick", {"user": "alice", "session": "x"})
        self.harness.registry.lookups[-1][1].callback([info("phone", "gw-2")])
        status, body = self.answer(request)
        self.assertEqual((status, body["error"]), (404, "not_found"))
        self.assertEqual(self.harness.bus.sent, [])

    def test_kick_refuses_bad_users_and_sessions(self) -> None:
        """An invalid user or session id is refused before any lookup."""
        for body, code in (
            ({}, "bad_recipient"),
            ({"user": "a b"}, "bad_recipient"),
            ({"user": "alice", "session": 3}, "bad_frame"),
        ):
            status, answer = self.answer(self.post(b"/v1/admin/kick", body))
            self.assertEqual((status, answer["error"]), (400, code))
        self.assertEqual(self.harness.registry.lookups, [])

    def test_kick_notice_spares_a_newer_connection(self) -> None:
        """A kick notice closes the local connection of the session only if its
        epoch is no newer than the one the operator saw."""
        _, link = self.harness.online(epoch=8)
        self.gateway.on_notice(topics.encode_kick_notice("alice", "phone", 7))
        self.assertEqual(link.closes, [])

        self.gateway.on_notice(topics.encode_kick_notice("alice", "phone", 8))
        self.assertEqual(link.closes, [(wire.CLOSE_POLICY, KICKED)])

    def test_kick_notice_needs_a_session_and_an_integer_epoch(self) -> None:
        """A kick notice without a session or with a non-integer epoch is refused."""
        for notice in (
            {"kind": "kick", "user": "a", "epoch": 1},
            {"kind": "kick", "user": "a", "session": "s", "epoch": True},
        ):
            with self.assertRaises(ValueError):
                topics.decode_notice(json.dumps(notice).encode())
