"""Unit tests for :mod:`wsha.drain_control`: ``POST /v1/admin/drain``."""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.error import UnsupportedMethod
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from tests.unit.fakes import GatewayHarness
from wsha import control
from wsha.drain import DrainTiming, NodeDrain
from wsha.drain_control import DrainCommand

TOKEN = "control-secret"


class DrainCommandTests(SynchronousTestCase):
    """The command starts the drain once and says how it will go."""

    def setUp(self) -> None:
        self.harness = GatewayHarness()
        self.stops: list[float] = []
        self.drain = NodeDrain(
            self.harness.clock,
            "gw-1",
            self.harness.gateway,
            _NoKafka(),
            DrainTiming(grace=2.0, window=10.0, move_timeout=5.0, timeout=30.0),
            lambda: None,
            lambda: None,
            lambda: self.stops.append(self.harness.clock.seconds()),
        )
        self.drain.startService()
        # Mounted as the node mounts it, beside the other admin commands.
        admin = control.Guarded(TOKEN)
        admin.putChild(b"drain", DrainCommand(self.drain, TOKEN))
        self.site = control.control_site(
            self.harness.gateway,
            lambda: succeed((True, {})),
            TOKEN,
            commands={b"admin": admin},
        )

    def tearDown(self) -> None:
        # A started drain runs to its end; nothing is left scheduled.
        self.harness.clock.advance(31)
        self.assertEqual(self.harness.clock.getDelayedCalls(), [])

    def post(
        self, token: str | None = TOKEN, body: bytes = b""
    ) -> tuple[int, dict[str, Any]]:
        """POST /v1/admin/drain; the status and the JSON answer."""
        request = DummyRequest([b"v1", b"admin", b"drain"])
        request.method = b"POST"
        request.content = BytesIO(body)
        if token is not None:
            request.requestHeaders.addRawHeader(b"authorization", f"Bearer {token}")
        request.render(getChildForRequest(self.site.resource, request))
        self.assertEqual(request.finished, 1)
        return request.responseCode, json.loads(b"".join(request.written))

    def test_post_starts_the_drain_and_answers_202(self) -> None:
        """The answer names the node and the drain's timings, in milliseconds."""
        status, body = self.post()
        self.assertEqual(status, 202)
        self.assertEqual(
            body,
            {
                "node": "gw-1",
                "draining": True,
                "started": True,
                "window": 10.0,
                "grace_ms": 2000,
                "window_ms": 10000,
                "move_timeout_ms": 5000,
                "timeout_ms": 30000,
            },
        )
        self.assertTrue(self.drain.draining)

    def test_window_asked_for_replaces_the_nodes_own(self) -> None:
        """``{"window": 60}`` spreads the moves over 60 s; the drain's bound
        grows by as much as the window did."""
        status, body = self.post(body=b'{"window": 60}')
        self.assertEqual(
            (status, body["window"], body["window_ms"]), (202, 60.0, 60000)
        )
        self.assertEqual(body["timeout_ms"], 80000)
        self.assertEqual(self.drain.timing.window, 60.0)

    def test_bad_window_is_refused_and_nothing_drains(self) -> None:
        """A window that is not a number of seconds from 0 to 3600, or a body
        that is not a JSON object, is a 400 and the node keeps serving."""
        for raw, code in (
            (b'{"window": -1}', "bad_frame"),
            (b'{"window": "60"}', "bad_frame"),
            (b'{"window": true}', "bad_frame"),
            (b'{"window": 3601}', "bad_frame"),
            (b"[60]", "bad_frame"),
            (b"{", "bad_json"),
        ):
            status, body = self.post(body=raw)
            self.assertEqual((status, body["error"]), (400, code), raw)
        self.assertFalse(self.drain.draining)

    def test_window_of_a_drain_under_way_is_not_changed(self) -> None:
        """A second request's window is ignored: the drain goes on as it was."""
        self.post()
        status, body = self.post(body=b'{"window": 60}')
        self.assertEqual((status, body["started"], body["window"]), (202, False, 10.0))

    def test_second_post_changes_nothing(self) -> None:
        """Asking again answers 202 with ``started`` false; one stop follows."""
        self.post()
        status, body = self.post()
        self.assertEqual((status, body["started"]), (202, False))
        self.harness.clock.advance(2.0)
        self.harness.clock.advance(0.1)
        self.assertEqual(len(self.stops), 1)

    def test_token_is_required(self) -> None:
        """Without the control token the node answers 401 and does not drain."""
        status, body = self.post(token=None)
        self.assertEqual((status, body["error"]), (401, "unauthorized"))
        status, _ = self.post(token="wrong")
        self.assertEqual(status, 401)
        self.assertFalse(self.drain.draining)

    def test_get_is_not_allowed(self) -> None:
        """Only POST drains."""
        request = DummyRequest([b"v1", b"admin", b"drain"])
        request.method = b"GET"
        request.requestHeaders.addRawHeader(b"authorization", f"Bearer {TOKEN}")
        # twisted.web's Site turns this into a 405 answer.
        with self.assertRaises(UnsupportedMethod):
            request.render(getChildForRequest(self.site.resource, request))
        self.assertFalse(self.drain.draining)


class _NoKafka:
    """A bus with nothing to flush."""

    def flush(self, timeout: float) -> Deferred[int]:
        """Nothing queued."""
        return succeed(0)
