"""Unit tests for market data's settings and its control API publish call."""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from tests.unit.fakes import GatewayHarness
from tests.unit.market_fakes import FakeStreams
from wsha import control, keys
from wsha.config import NodeConfig
from wsha.control_market import InstrumentTicks
from wsha.market import InstrumentStore

TOKEN = "control-secret"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"instrument_max_length": 0}, "instrument-max-length must be positive"),
        ({"slow_client_timeout": 0.0}, "slow-client-timeout must be positive"),
        ({"max_output_bytes": 1000}, "max-output-bytes must be at least"),
    ],
)
def test_check_refuses_market_settings_that_cannot_work(
    overrides: dict[str, object], message: str
) -> None:
    """Retention, the slow-client timeout and the output cap are checked."""
    config = NodeConfig(node_id="n1", jwt_secret="s")
    for name, value in overrides.items():
        setattr(config, name, value)
    with pytest.raises(ValueError, match=message):
        config.check()


def test_market_defaults() -> None:
    """1000 ticks kept, 10 s and 1 MiB before a slow client is closed."""
    config = NodeConfig(node_id="n1", jwt_secret="s")
    config.check()
    assert (
        config.instrument_max_length,
        config.slow_client_timeout,
        config.max_output_bytes,
    ) == (1000, 10.0, 1024 * 1024)


class InstrumentTicksTests(SynchronousTestCase):
    """``POST /v1/instruments/{instrument}/ticks``."""

    def setUp(self) -> None:
        self.harness = GatewayHarness()
        self.streams = FakeStreams()
        store = InstrumentStore(self.streams, max_length=500)
        self.site = control.control_site(
            self.harness.gateway,
            self.ready,
            TOKEN,
            commands={b"instruments": InstrumentTicks(store, 64 * 1024, TOKEN)},
        )

    def ready(self) -> Deferred[tuple[bool, dict[str, Any]]]:
        """A readiness check that is never asked here."""
        return succeed((True, {}))

    def post(
        self, path: bytes | list[bytes], body: Any, token: str | None = TOKEN
    ) -> tuple[int, dict[str, Any]]:
        """POST ``body`` (JSON unless bytes) to ``path``; return status and JSON.

        ``path`` may be the segments as twisted.web gives them (percent-decoded).
        """
        segments = path if isinstance(path, list) else path.lstrip(b"/").split(b"/")
        request = DummyRequest(segments)
        request.method = b"POST"
        request._disconnected = False
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        request.content = BytesIO(raw)
        if token is not None:
            request.requestHeaders.addRawHeader(b"authorization", f"Bearer {token}")
        request.render(getChildForRequest(self.site.resource, request))
        self.assertEqual(request.finished, 1)
        return request.responseCode, json.loads(b"".join(request.written))

    def test_publish_appends_and_answers_the_id(self) -> None:
        """The value is appended to the instrument's stream; 200 with its id."""
        status, body = self.post(b"/v1/instruments/EURUSD/ticks", {"value": {"b": 1}})
        self.assertEqual(status, 200)
        self.assertEqual(
            body, {"instrument": "EURUSD", "id": self.streams.ids("EURUSD")[0]}
        )
        key = keys.instrument_ticks("EURUSD")
        self.assertEqual(self.streams.streams[key][0][1], ["v", '{"b":1}'])
        self.assertEqual(self.streams.commands[0][2:5], ("MAXLEN", "~", 500))

    def test_instrument_with_slashes(self) -> None:
        """``fx/EURUSD`` may be given as path segments or percent-encoded."""
        encoded = [b"v1", b"instruments", b"fx/EURUSD", b"ticks"]
        for path in (b"/v1/instruments/fx/EURUSD/ticks", encoded):
            status, body = self.post(path, {"value": 1})
            self.assertEqual((status, body["instrument"]), (200, "fx/EURUSD"))

    def test_refusals(self) -> None:
        """Bad names, bodies and values are refused before anything is stored."""
        cases: list[tuple[bytes, Any, int, str]] = [
            (b"/v1/instruments/a%20b/ticks", {"value": 1}, 400, "bad_instrument"),
            (b"/v1/instruments/ticks", {"value": 1}, 404, "not_found"),
            (b"/v1/instruments/X/other", {"value": 1}, 404, "not_found"),
            (b"/v1/instruments/X/ticks", b"{nope", 400, "bad_json"),
            (b"/v1/instruments/X/ticks", {"val": 1}, 400, "bad_frame"),
            (b"/v1/instruments/X/ticks", [1], 400, "bad_frame"),
            (b"/v1/instruments/X/ticks", b'{"value": NaN}', 400, "bad_json"),
            (b"/v1/instruments/X/ticks", {"value": "x" * 70_000}, 413, "body_too_big"),
        ]
        for path, body, status, code in cases:
            answer = self.post(path, body)
            self.assertEqual((answer[0], answer[1]["error"]), (status, code), path)
        self.assertEqual(self.streams.commands, [])

    def test_needs_the_control_token(self) -> None:
        """Without the bearer token: 401, nothing stored."""
        status, body = self.post(b"/v1/instruments/X/ticks", {"value": 1}, token=None)
        self.assertEqual((status, body["error"]), (401, "unauthorized"))
        self.assertEqual(self.streams.commands, [])

    def test_store_unavailable_is_503(self) -> None:
        """Redis unreachable: 503 unavailable, retry true."""
        self.streams.down = True
        status, body = self.post(b"/v1/instruments/X/ticks", {"value": 1})
        self.assertEqual(
            (status, body["error"], body["retry"]), (503, "unavailable", True)
        )
