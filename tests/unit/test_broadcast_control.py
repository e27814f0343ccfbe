"""``POST /v1/broadcast`` and the Broadcaster behind it, on fakes."""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from tests.unit.broadcast_fakes import bentry
from tests.unit.fakes import GatewayHarness
from wsha import control, topics
from wsha.broadcast.control import BroadcastCommand
from wsha.broadcast.entry import EVERYONE, Audience, BroadcastEntry
from wsha.broadcast.sender import Broadcaster
from wsha.broadcast.store import Stored
from wsha.services.redis_service import RedisUnavailable

TOKEN = "control-secret"


class FakeBroadcaster:
    """Records each broadcast asked for; the test fires the answer."""

    def __init__(self) -> None:
        self.sent: list[tuple[tuple[str, str, str, Audience], Deferred[Any]]] = []

    def send(
        self, sender: str, client_id: str, body_json: str, audience: Audience
    ) -> Deferred[Any]:
        """Record the broadcast; return a Deferred for the test to fire."""
        d: Deferred[Any] = Deferred()
        self.sent.append(((sender, client_id, body_json, audience), d))
        return d


class BroadcastCommandTests(SynchronousTestCase):
    """Validation and answers of POST /v1/broadcast."""

    def setUp(self) -> None:
        self.broadcaster = FakeBroadcaster()
        self.site = control.control_site(
            GatewayHarness().gateway,
            lambda: succeed((True, {})),
            TOKEN,
            commands={b"broadcast": BroadcastCommand(self.broadcaster, TOKEN, 100)},
        )

    def post(self, body: Any, token: str | None = TOKEN) -> DummyRequest:
        """POST ``body`` (JSON, or raw bytes) to /v1/broadcast."""
        request = DummyRequest([b"v1", b"broadcast"])
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

    def test_stores_and_answers_with_the_history_id(self) -> None:
        """A valid request is stored with its sender, id, body and audience; the
        answer names the history id and whether it was a retry."""
        request = self.post(
            {"id": "op-1", "from": "ops", "body": {"t": 1}, "audience": {"tag": "g"}}
        )
        args, d = self.broadcaster.sent[0]
        self.assertEqual(args, ("ops", "op-1", '{"t":1}', Audience("tag", "g")))
        self.assertEqual(request.finished, 0)

        d.callback(Stored("5-0", "4-0", False, bentry("5-0")))

        self.assertEqual(self.answer(request), (200, {"id": "5-0", "duplicate": False}))

    def test_defaults_sender_and_id(self) -> None:
        """Without ``from`` the sender is ``server``; without ``id`` one is made up."""
        self.post({"body": None, "audience": "all"})
        (sender, client_id, body, audience), _ = self.broadcaster.sent[0]
        self.assertEqual((sender, body, audience), ("server", "null", EVERYONE))
        self.assertEqual(len(client_id), 32)

    def test_validation_errors(self) -> None:
        """Bad requests get 400 (413 for size) and store nothing."""
        cases: list[tuple[Any, int, str]] = [
            (b"{", 400, "bad_json"),
            ([], 400, "bad_frame"),
            ({"body": 1, "audience": "all", "from": "a b"}, 400, "bad_frame"),
            ({"body": 1, "audience": "all", "id": ""}, 400, "bad_frame"),
            ({"audience": "all"}, 400, "bad_frame"),
            ({"body": "x" * 200, "audience": "all"}, 413, "body_too_big"),
            ({"body": 1}, 400, "bad_audience"),
            ({"body": 1, "audience": "everyone"}, 400, "bad_audience"),
            ({"body": 1, "audience": {"tag": "a b"}}, 400, "bad_audience"),
            ({"body": 1, "audience": {"node": 1}}, 400, "bad_audience"),
        ]
        for body, status, code in cases:
            answer = self.answer(self.post(body))
            self.assertEqual((answer[0], answer[1]["error"]), (status, code), body)
            self.assertFalse(answer[1]["retry"])
        self.assertEqual(self.broadcaster.sent, [])

    def test_unreachable_store_is_a_retryable_503(self) -> None:
        """When Redis cannot store it, the answer is 503 with retry true."""
        request = self.post({"body": 1, "audience": "all"})
        self.broadcaster.sent[0][1].errback(RedisUnavailable("Redis is down"))
        status, body = self.answer(request)
        self.assertEqual(
            (status, body["error"], body["retry"]), (503, "unavailable", True)
        )

    def test_needs_the_control_token(self) -> None:
        """Without the token the answer is 401 and nothing is stored."""
        status, body = self.answer(self.post({"body": 1, "audience": "all"}, None))
        self.assertEqual((status, body["error"]), (401, "unauthorized"))
        self.assertEqual(self.broadcaster.sent, [])


class FakeStore:
    """A broadcast store whose append answers with what the test set."""

    def __init__(self, stored: Stored) -> None:
        self.stored = stored
        self.appends: list[tuple[str, str, str, Audience, int]] = []

    def append(
        self, sender: str, client_id: str, body_json: str, audience: Audience, ts: int
    ) -> Deferred[Any]:
        """Record the append; answer with ``stored``."""
        self.appends.append((sender, client_id, body_json, audience, ts))
        return succeed(self.stored)


class BroadcasterTests(SynchronousTestCase):
    """History first, then the record for the other nodes and the local feed."""

    def setUp(self) -> None:
        self.records: list[bytes] = []
        self.offers: list[tuple[BroadcastEntry, str]] = []
        self.clock = Clock()
        self.clock.advance(1_700_000_000)

    def publish_broadcast(self, record: bytes) -> None:
        """The bus: keep the record."""
        self.records.append(record)

    def offer(self, entry: BroadcastEntry, prev: str) -> None:
        """The local feed: keep the offer."""
        self.offers.append((entry, prev))

    def broadcast(self, stored: Stored) -> tuple[FakeStore, Stored]:
        """Send one broadcast through a Broadcaster whose store answers ``stored``."""
        store = FakeStore(stored)
        broadcaster = Broadcaster(store, self, self, self.clock)
        result = broadcaster.send("ops", "op-1", '"hi"', EVERYONE)
        return store, self.successResultOf(result)

    def test_stored_then_announced_and_applied_locally(self) -> None:
        """The broadcast is stored with the clock's time, then its record (with
        the id before it) is published and the local feed gets it."""
        entry = bentry("5-0")
        store, result = self.broadcast(Stored("5-0", "4-0", False, entry))

        self.assertEqual(
            store.appends, [("ops", "op-1", '"hi"', EVERYONE, 1_700_000_000_000)]
        )
        self.assertEqual(result.id, "5-0")
        self.assertEqual(
            [topics.decode_broadcast_record(r) for r in self.records], [(entry, "4-0")]
        )
        self.assertEqual(self.offers, [(entry, "4-0")])

    def test_a_retry_is_announced_again(self) -> None:
        """A retry of a stored broadcast is announced again: the first
        announcement may be what failed."""
        entry = bentry("5-0")
        self.broadcast(Stored("5-0", "4-0", True, entry))
        self.assertEqual(len(self.records), 1)

    def test_a_retry_of_a_trimmed_broadcast_announces_nothing(self) -> None:
        """A retry of one no longer in the history has nothing to announce."""
        _, result = self.broadcast(Stored("5-0", "", True, None))
        self.assertTrue(result.duplicate)
        self.assertEqual((self.records, self.offers), ([], []))
