"""Unit tests for :class:`wsha.client_session.ClientSession` on a faked gateway."""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.fakes import GatewayHarness, appended, make_claim, make_entry
from wsha import wire
from wsha.client_session import MAX_EARLY_FRAMES, MAX_QUEUED_SENDS
from wsha.services.redis_service import RedisUnavailable


def send_frame(client_id: str, to: str = "bob", body: object = "hi") -> str:
    """A client ``send`` frame as text."""
    return json.dumps({"type": "send", "id": client_id, "to": to, "body": body})


class ClientSessionTests(SynchronousTestCase):
    """The frame-level contract of docs/protocol.md, one connection at a time."""

    def setUp(self) -> None:
        self.harness = GatewayHarness()

    def test_claim_uses_user_session_node_and_after(self) -> None:
        """start() claims (user, session) for this node, resuming after ``after``."""
        self.harness.connect("alice", "tab-1", after="9-0")
        self.assertEqual(
            self.harness.registry.claims[0][0], ("alice", "tab-1", "gw-1", "9-0")
        )

    def test_welcome_after_claim(self) -> None:
        """Once the claim returns, the first frame is a welcome describing it."""
        _, link, pending = self.harness.connect()
        self.assertEqual(link.frames, [])

        pending.callback(
            make_claim(12, replay_after="5-0", pending=3, trimmed=True, resumed=True)
        )

        self.assertEqual(
            link.frames,
            [
                {
                    "type": "welcome",
                    "node": "gw-1",
                    "user": "alice",
                    "session": "phone",
                    "epoch": 12,
                    "resumed": True,
                    "after": "5-0",
                    "replayed": 3,
                    "truncated": True,
                    "groups": {},
                }
            ],
        )

    def test_replay_starts_after_the_claims_cursor(self) -> None:
        """After the welcome, the inbox is read after replay_after and delivered."""
        _, link, pending = self.harness.connect()
        pending.callback(make_claim(1, replay_after="5-0"))

        (user, after, _), read = self.harness.inbox.reads[0]
        self.assertEqual((user, after), ("alice", "5-0"))
        read.callback([make_entry("6-0", {"n": 1}), make_entry("7-0", {"n": 2})])

        messages = link.of_type("message")
        self.assertEqual([m["id"] for m in messages], ["6-0", "7-0"])
        self.assertEqual(messages[1]["body"], {"n": 2})
        self.assertEqual(link.frames[0]["type"], "welcome")

    def test_frames_before_claim_are_handled_after_it_in_order(self) -> None:
        """Frames sent during the claim are answered after the welcome, in order."""
        client, link, pending = self.harness.connect()
        client.on_text('{"type": "ping", "id": "p1"}')
        client.on_text(send_frame("c1"))
        client.on_text('{"type": "ping", "id": "p2"}')
        self.assertEqual(link.frames, [])
        self.assertEqual(self.harness.inbox.appends, [])

        pending.callback(make_claim(1))

        self.assertEqual(
            [(f["type"], f.get("id")) for f in link.frames],
            [("welcome", None), ("pong", "p1"), ("pong", "p2")],
        )
        self.assertEqual(self.harness.inbox.appends[0][0][2], "c1")

    def test_too_many_frames_before_claim_is_a_policy_close(self) -> None:
        """A client flooding frames before its welcome is closed with 1008."""
        client, link, _ = self.harness.connect()
        for _ in range(MAX_EARLY_FRAMES):
            client.on_text('{"type": "ping"}')
        self.assertEqual(link.closes, [])
        client.on_text('{"type": "ping"}')
        self.assertEqual(link.closes[0][0], wire.CLOSE_POLICY)

    def test_send_is_stored_then_acknowledged_with_inbox_id(self) -> None:
        """A send is appended to the recipient's inbox; the ack names its inbox id."""
        client, link = self.harness.online()
        client.on_text(send_frame("c-9", to="bob", body={"text": "hi"}))

        args, stored = self.harness.inbox.appends[0]
        ts = int(self.harness.clock.seconds() * 1000)
        self.assertEqual(args, ("bob", "alice", "c-9", '{"text":"hi"}', ts))
        self.assertEqual(link.of_type("ack"), [])

        stored.callback(appended("1700000000000-4"))

        self.assertEqual(
            link.of_type("ack"),
            [
                {
                    "type": "ack",
                    "id": "c-9",
                    "inbox": "1700000000000-4",
                    "duplicate": False,
                }
            ],
        )

    def test_failed_append_is_a_retryable_error(self) -> None:
        """When Redis cannot store a send, the client gets ``unavailable``, retry
        true, and the connection stays open."""
        client, link = self.harness.online()
        client.on_text(send_frame("c-1"))
        self.harness.inbox.appends[0][1].errback(RedisUnavailable("redis down"))

        self.assertEqual(
            link.of_type("error"),
            [
                {
                    "type": "error",
                    "code": "unavailable",
                    "message": "message store unreachable",
                    "retry": True,
                    "id": "c-1",
                }
            ],
        )
        self.assertEqual(link.closes, [])

    def test_sends_after_a_failed_one_wait_until_it_comes_again(self) -> None:
        """After a send fails, later sends of the connection are refused with
        resend_earlier (retryable) until the failed id is sent again; then
        sends are stored again, in order."""
        client, link = self.harness.online()
        client.on_text(send_frame("c-1"))
        self.harness.inbox.appends[0][1].errback(RedisUnavailable("redis down"))
        client.on_text(send_frame("c-2"))
        self.assertEqual(len(self.harness.inbox.appends), 1)
        refusal = link.of_type("error")[-1]
        self.assertEqual(
            (refusal["code"], refusal["retry"], refusal["id"]),
            ("resend_earlier", True, "c-2"),
        )

        client.on_text(send_frame("c-1"))
        client.on_text(send_frame("c-2"))
        self.harness.inbox.appends[1][1].callback(appended("1-0"))
        stored = [args[2] for args, _ in self.harness.inbox.appends]
        self.assertEqual(stored, ["c-1", "c-1", "c-2"])

    def test_sends_are_stored_one_at_a_time_in_order(self) -> None:
        """A send is not started before the one ahead of it is answered, so
        when that one fails the later one is refused instead of overtaking it."""
        client, link = self.harness.online()
        client.on_text(send_frame("c-1"))
        client.on_text(send_frame("c-2"))
        self.assertEqual(len(self.harness.inbox.appends), 1)
        self.harness.inbox.appends[0][1].errback(RedisUnavailable("redis down"))
        self.assertEqual(len(self.harness.inbox.appends), 1)
        codes = [(f["code"], f["id"]) for f in link.of_type("error")]
        self.assertEqual(codes, [("unavailable", "c-1"), ("resend_earlier", "c-2")])

    def test_too_many_queued_sends_close_the_connection_with_1013(self) -> None:
        """Past the queue bound the connection closes with 1013 (so the client
        resends in order) instead of refusing one send out of order."""
        client, link = self.harness.online()
        for i in range(MAX_QUEUED_SENDS + 2):
            client.on_text(send_frame(f"c-{i}"))
        self.assertEqual(link.closes[0][0], wire.CLOSE_TRY_LATER)
        self.assertEqual(link.of_type("error"), [])

    def test_unexpected_append_failure_is_internal_and_retryable(self) -> None:
        """A send that failed for another reason is ``internal``, retry true, and
        the failure is logged with its traceback."""
        client, link = self.harness.online()
        client.on_text(send_frame("c-1"))
        self.harness.inbox.appends[0][1].errback(ValueError("script bug"))

        errors = [(f["code"], f["retry"], f["id"]) for f in link.of_type("error")]
        self.assertEqual(errors, [("internal", True, "c-1")])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(link.closes, [])

    def test_bad_frames_get_errors_and_connection_stays_open(self) -> None:
        """Malformed JSON, unknown types and binary frames are answered, not closed."""
        client, link = self.harness.online()
        client.on_text("{oops")
        client.on_text('{"type": "teleport", "id": "t1"}')
        client.on_text(send_frame("c-2", body="x" * 200))
        client.on_binary()
        client.on_text('{"type": "ping", "id": "still-here"}')

        errors = [(f["code"], f["retry"], f.get("id")) for f in link.of_type("error")]
        self.assertEqual(
            errors,
            [
                ("bad_json", False, None),
                ("unknown_type", False, "t1"),
                ("body_too_big", False, "c-2"),
                ("binary_not_supported", False, None),
            ],
        )
        self.assertEqual(link.frames[-1], {"type": "pong", "id": "still-here"})
        self.assertEqual(link.closes, [])
        self.assertEqual(self.harness.inbox.appends, [])

    def test_ack_frame_advances_cursor_with_epoch(self) -> None:
        """An ack frame is recorded in the registry under the session's epoch."""
        client, _ = self.harness.online(epoch=4)
        self.harness.inbox.reads[-1][1].callback([make_entry("10-2", {"n": 1})])
        client.on_text('{"type": "ack", "upto": "10-2"}')
        self.assertEqual(self.harness.registry.acks, [("alice", "phone", "4", "10-2")])

    def test_ack_beyond_what_was_delivered_is_refused(self) -> None:
        """An ack past the last delivered message is an error and moves nothing:
        a stored cursor beyond it would make a later resume skip messages."""
        client, link = self.harness.online(epoch=4)
        self.harness.inbox.reads[-1][1].callback([make_entry("10-2", {"n": 1})])
        client.on_text('{"type": "ack", "upto": "11-0"}')
        self.assertEqual(self.harness.registry.acks, [])
        self.assertEqual(link.of_type("error")[-1]["code"], "bad_frame")

    def test_failed_claim_closes_with_try_later(self) -> None:
        """If the session store cannot claim, the connection closes with 1013."""
        _, link, pending = self.harness.connect()
        pending.errback(RedisUnavailable("redis down"))
        self.assertEqual(link.closes[0][0], wire.CLOSE_TRY_LATER)
        self.assertEqual(link.frames, [])

    def test_close_during_claim_releases_after_it(self) -> None:
        """A connection lost during its claim releases the claim when it returns."""
        client, link, pending = self.harness.connect()
        client.connection_lost()
        self.assertEqual(self.harness.registry.releases, [])

        pending.callback(make_claim(3))

        self.assertEqual(self.harness.registry.releases, [("alice", "phone", "3")])
        self.assertEqual(link.frames, [])
        self.assertEqual(self.harness.gateway.connection_count(), 0)

    def test_connection_lost_stops_delivery(self) -> None:
        """After the connection is lost, entries read in flight are not written."""
        client, link = self.harness.online()
        client.connection_lost()
        self.harness.inbox.reads[0][1].callback([make_entry("1-0")])
        self.assertEqual(link.of_type("message"), [])
        self.assertEqual(self.harness.registry.releases, [("alice", "phone", "7")])

    def test_reply_after_close_is_not_written(self) -> None:
        """An ack whose append completes after the close is dropped, not written."""
        client, link = self.harness.online()
        client.on_text(send_frame("c-3"))
        client.connection_lost()
        stored: Deferred[object] = self.harness.inbox.appends[0][1]
        stored.callback(appended("1-0"))
        self.assertEqual(link.of_type("ack"), [])
