"""Unit tests for :mod:`wsha.control`, the HTTP control API, with DummyRequest."""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from tests.unit.fakes import GatewayHarness, appended
from wsha import control
from wsha.sessions import SessionInfo

TOKEN = "control-secret"


class ControlTests(SynchronousTestCase):
    """Routing, validation and answers of the control resources."""

    def setUp(self) -> None:
        self.harness = GatewayHarness()
        self.readiness: list[Deferred[tuple[bool, dict[str, Any]]]] = []
        self.site = control.control_site(self.harness.gateway, self.check, TOKEN)

    def check(self) -> Deferred[tuple[bool, dict[str, Any]]]:
        """The readiness check: a Deferred the test fires."""
        d: Deferred[tuple[bool, dict[str, Any]]] = Deferred()
        self.readiness.append(d)
        return d

    def request(
        self, method: bytes, path: bytes, body: Any = None, token: str | None = TOKEN
    ) -> DummyRequest:
        """Route and render ``method path`` from the site's root; return the request."""
        request = DummyRequest(path.lstrip(b"/").split(b"/"))
        request.method = method
        # twisted.web's Request has this flag; control.py reads it.
        request._disconnected = False
        if isinstance(body, bytes):
            request.content = BytesIO(body)
        else:
            request.content = BytesIO(json.dumps(body).encode())
        if token is not None:
            request.requestHeaders.addRawHeader(b"authorization", f"Bearer {token}")
        request.render(getChildForRequest(self.site.resource, request))
        return request

    def answer(self, request: DummyRequest) -> tuple[int, dict[str, Any]]:
        """The finished request's status and JSON body."""
        self.assertEqual(request.finished, 1)
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"content-type"),
            [b"application/json"],
        )
        return request.responseCode, json.loads(b"".join(request.written))

    def test_healthz(self) -> None:
        """/healthz answers 200 with the node id, without a token."""
        request = self.request(b"GET", b"/healthz", token=None)
        self.assertEqual(self.answer(request), (200, {"status": "ok", "node": "gw-1"}))

    def test_readyz_follows_the_check(self) -> None:
        """/readyz waits for the check, then answers 200 when ready and 503 when not."""
        ready = self.request(b"GET", b"/readyz", token=None)
        self.assertEqual(ready.finished, 0)
        self.readiness[0].callback((True, {"redis": True}))
        self.assertEqual(self.answer(ready), (200, {"redis": True, "ready": True}))

        draining = self.request(b"GET", b"/readyz", token=None)
        self.readiness[1].callback((False, {"redis": True, "listening": False}))
        status, body = self.answer(draining)
        self.assertEqual((status, body["ready"]), (503, False))

    def test_readyz_failing_check_is_503(self) -> None:
        """A readiness check that fails answers 503, and the failure is logged."""
        request = self.request(b"GET", b"/readyz", token=None)
        self.readiness[0].errback(RuntimeError("boom"))
        status, body = self.answer(request)
        self.assertEqual(
            (status, body["error"], body["retry"]), (503, "unavailable", True)
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_commands_require_the_control_token(self) -> None:
        """Send and user lookup answer 401 without the right Bearer token."""
        for token in (None, "wrong", TOKEN + "x", "\u00e9"):
            for method, path in ((b"POST", b"/v1/send"), (b"GET", b"/v1/users/bob")):
                request = self.request(method, path, {"to": "bob", "body": 1}, token)
                self.assertEqual(self.answer(request)[0], 401)
        self.assertEqual(self.harness.inbox.appends, [])
        self.assertEqual(self.harness.registry.lookups, [])

    def test_send_validation_errors(self) -> None:
        """Bad send commands are refused with 400 or 413 and their error code."""
        cases = [
            (b"{not json", 400, "bad_json"),
            ([1], 400, "bad_frame"),
            ({"body": 1}, 400, "bad_recipient"),
            ({"to": "b b", "body": 1}, 400, "bad_recipient"),
            ({"to": "bob", "from": "a b", "body": 1}, 400, "bad_frame"),
            ({"to": "bob", "id": 7, "body": 1}, 400, "bad_frame"),
            ({"to": "bob", "id": 0, "body": 1}, 400, "bad_frame"),
            ({"to": "bob", "id": "", "body": 1}, 400, "bad_frame"),
            ({"to": "bob", "id": None, "body": 1}, 400, "bad_frame"),
            ({"to": "bob", "id": "x" * 129, "body": 1}, 400, "bad_frame"),
            ({"to": "bob"}, 400, "bad_frame"),
            ({"to": "bob", "body": "x" * 200}, 413, "body_too_big"),
            ({"to": "bob", "body": "\u20ac" * 40}, 413, "body_too_big"),
            (b" " * (control.MAX_REQUEST_BYTES + 1), 413, "body_too_big"),
        ]
        for body, status, code in cases:
            got_status, got = self.answer(self.request(b"POST", b"/v1/send", body))
            self.assertEqual(
                (got_status, got["error"], got["retry"]), (status, code, False)
            )
        self.assertEqual(self.harness.inbox.appends, [])

    def test_send_stores_and_answers_with_inbox_id(self) -> None:
        """A valid send is stored as the named sender; the answer has its inbox id."""
        request = self.request(
            b"POST", b"/v1/send", {"to": "bob", "from": "ops", "id": "m-1", "body": [1]}
        )
        args, stored = self.harness.inbox.appends[0]
        self.assertEqual(args[:4], ("bob", "ops", "m-1", "[1]"))
        self.assertEqual(request.finished, 0)

        stored.callback(appended("1700000000000-0", duplicate=True))

        self.assertEqual(
            self.answer(request),
            (200, {"id": "m-1", "inbox": "1700000000000-0", "duplicate": True}),
        )

    def test_send_defaults_sender_and_id(self) -> None:
        """Without 'from' and 'id', the sender is 'server' and an id is generated."""
        request = self.request(b"POST", b"/v1/send", {"to": "bob", "body": None})
        (_, sender, client_id, body_json, _), stored = self.harness.inbox.appends[0]
        self.assertEqual((sender, body_json), ("server", "null"))
        self.assertTrue(client_id)
        stored.callback(appended("2-0"))
        self.assertEqual(self.answer(request)[1]["id"], client_id)

    def test_send_store_failure_is_retryable_503(self) -> None:
        """When the inbox cannot store, the command answers 503 with retry true."""
        request = self.request(b"POST", b"/v1/send", {"to": "bob", "body": 1})
        self.harness.inbox.appends[0][1].errback(ConnectionError("redis down"))
        status, body = self.answer(request)
        self.assertEqual(
            (status, body["error"], body["retry"]), (503, "unavailable", True)
        )
        self.flushLoggedErrors(ConnectionError)

    def test_user_lookup(self) -> None:
        """/v1/users/{id} lists the user's sessions from the registry."""
        request = self.request(b"GET", b"/v1/users/bob")
        user, found = self.harness.registry.lookups[0]
        self.assertEqual(user, "bob")
        found.callback(
            [
                SessionInfo("s1", "gw-2", True, "12", "5-0", 3),
                SessionInfo("s2", "", False, "4", "0-0", 0),
            ]
        )
        status, body = self.answer(request)
        self.assertEqual(status, 200)
        self.assertEqual(body["online"], True)
        self.assertEqual(
            body["sessions"],
            [
                {
                    "session": "s1",
                    "online": True,
                    "node": "gw-2",
                    "epoch": 12,
                    "cursor": "5-0",
                    "seen": 3,
                },
                {
                    "session": "s2",
                    "online": False,
                    "node": None,
                    "epoch": 4,
                    "cursor": "0-0",
                    "seen": 0,
                },
            ],
        )

    def test_user_lookup_rejects_bad_user_id(self) -> None:
        """A user id that is not valid answers 400 without asking the registry."""
        request = self.request(b"GET", b"/v1/users/a b")
        self.assertEqual(self.answer(request)[0], 400)
        self.assertEqual(self.harness.registry.lookups, [])

    def test_user_lookup_with_extra_path_is_not_found(self) -> None:
        """``/v1/users/{id}/anything`` is a 404, not the user."""
        request = self.request(b"GET", b"/v1/users/bob/sessions")
        self.assertEqual(self.answer(request)[0], 404)
        self.assertEqual(self.harness.registry.lookups, [])

    def test_answer_to_a_gone_client_is_not_written(self) -> None:
        """If the HTTP client disconnected, the late answer is dropped."""
        request = self.request(b"POST", b"/v1/send", {"to": "bob", "body": 1})
        request._disconnected = True
        self.harness.inbox.appends[0][1].callback(appended("1-0"))
        self.assertEqual((request.finished, request.written), (0, []))

    def nodes_site(self) -> list[Deferred[dict[str, Any]]]:
        """Serve /v1/nodes from a listing the test fires; return its Deferreds."""
        listings: list[Deferred[dict[str, Any]]] = []

        def listing() -> Deferred[dict[str, Any]]:
            listings.append(Deferred())
            return listings[-1]

        self.site = control.control_site(
            self.harness.gateway, self.check, TOKEN, nodes=listing
        )
        return listings

    def test_nodes_answers_with_the_listing(self) -> None:
        """/v1/nodes answers 200 with what the registry lists, once it has it."""
        listings = self.nodes_site()
        listing = {"node": "gw-1", "nodes": [{"id": "gw-1"}], "dead": ["gw-9"]}
        request = self.request(b"GET", b"/v1/nodes")
        self.assertEqual(request.finished, 0)
        listings[0].callback(listing)
        self.assertEqual(self.answer(request), (200, listing))

    def test_nodes_needs_the_token(self) -> None:
        """Without the control token /v1/nodes is refused and lists nothing."""
        listings = self.nodes_site()
        request = self.request(b"GET", b"/v1/nodes", token=None)
        self.assertEqual(self.answer(request)[0], 401)
        self.assertEqual(listings, [])
