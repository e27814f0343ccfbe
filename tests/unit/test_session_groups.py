"""Unit tests for a connection's groups (:mod:`wsha.session_groups`), on fakes."""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.fakes import make_claim, make_entry
from tests.unit.group_fakes import GroupHarness, published
from wsha import keys
from wsha.groups import Joined


class SessionGroupsTests(SynchronousTestCase):
    """Subscribe, deliver, publish, acknowledge and leave, as the contract says."""

    def setUp(self) -> None:
        self.harness = GroupHarness()
        self.store = self.harness.store

    def subscribe(self, group: str = "room", **extra: object) -> None:
        """Have the connected client subscribe to ``group``."""
        frame = {"type": "subscribe", "id": f"s-{group}", "group": group, **extra}
        self.client.on_text(json.dumps(frame))

    def connect(self, **claim: object) -> None:
        """A welcomed connection of alice/phone with epoch 7."""
        self.client, self.link = self.harness.online(7, **claim)

    def test_subscribed_comes_before_the_groups_messages(self) -> None:
        """A new subscription is stored from the history's head, answered, and
        only then is the history read after that head."""
        self.connect()
        self.subscribe()
        self.assertEqual(
            self.link.of_type("subscribed"),
            [
                {
                    "type": "subscribed",
                    "id": "s-room",
                    "group": "room",
                    "after": "9-0",
                    "truncated": False,
                }
            ],
        )
        ((read, pending),) = self.store.reads
        self.assertEqual(read, ("room", "9-0", 256))
        pending.callback([make_entry("10-0", {"n": 1})])
        message = self.link.of_type("group_message")[0]
        self.assertEqual((message["group"], message["id"]), ("room", "10-0"))
        self.assertEqual(
            self.harness.fanout.members["room"], {self.client.groups.members["room"]}
        )

    def test_claim_restores_subscriptions_before_welcome(self) -> None:
        """Stored subscriptions are rejoined (presence fenced by the new epoch) and
        listed in welcome; each resumes after its stored position."""
        self.connect(subscriptions={"room": "4-0"}, presence_groups=frozenset({"room"}))
        welcome = self.link.frames[0]
        self.assertEqual(welcome["type"], "welcome")
        self.assertEqual(
            welcome["groups"], {"room": {"after": "4-0", "truncated": False}}
        )
        self.assertIn(("join", "room", "alice", "phone", "7", "gw-1"), self.store.calls)
        self.assertEqual(self.store.reads[0][0], ("room", "4-0", 256))
        self.assertTrue(self.client.groups.members["room"].presence)

    def test_trimmed_history_is_reported_as_truncated(self) -> None:
        """A position older than the newest trimmed id says messages were lost."""
        self.store.trimmed = "6-0"
        self.connect(subscriptions={"room": "4-0"})
        self.assertEqual(self.link.frames[0]["groups"]["room"]["truncated"], True)

    def test_group_limit_refuses_more_subscriptions(self) -> None:
        """Past the per-session limit a subscribe gets too_many_subscriptions."""
        self.connect()
        for group in ("a", "b", "c"):
            self.subscribe(group)
        (error,) = self.link.of_type("error")
        self.assertEqual(
            (error["code"], error["id"]), ("too_many_subscriptions", "s-c")
        )

    def test_publishes_are_acked_with_the_history_id_in_order(self) -> None:
        """A publish carries the session as member and is answered with its id;
        the next one waits for the first to be stored."""
        self.connect()
        for n in (1, 2):
            self.client.on_text(
                json.dumps(
                    {"type": "publish", "id": f"p{n}", "group": "room", "body": n}
                )
            )
        self.assertEqual(len(self.store.publishes), 1)
        args, pending = self.store.publishes[0]
        self.assertEqual(args[0], "room")
        self.assertEqual(args[-1], keys.member("alice", "phone"))
        pending.callback(published("12-0"))
        self.assertEqual(
            self.link.of_type("ack"),
            [
                {
                    "type": "ack",
                    "id": "p1",
                    "group": "room",
                    "history": "12-0",
                    "duplicate": False,
                }
            ],
        )
        self.assertEqual(len(self.store.publishes), 2)

    def test_group_ack_beyond_what_was_sent_is_refused(self) -> None:
        """A group ack past the last message sent is an error; one within moves
        the position with the connection's epoch; one for another group is
        not_subscribed."""
        self.connect()
        self.subscribe()
        self.store.reads[0][1].callback([make_entry("10-0")])
        self.client.on_text('{"type": "ack", "group": "room", "upto": "11-0"}')
        self.client.on_text('{"type": "ack", "group": "room", "upto": "10-0"}')
        self.client.on_text('{"type": "ack", "group": "other", "upto": "1-0"}')
        codes = [e["code"] for e in self.link.of_type("error")]
        self.assertEqual(codes, ["bad_frame", "not_subscribed"])
        self.assertIn(("ack", "room", "10-0", "7"), self.store.calls)

    def test_close_leaves_presence_fenced_and_detaches(self) -> None:
        """When the connection ends every group's presence is left with this
        connection's epoch and the fan-out no longer counts the session."""
        self.connect()
        self.subscribe()
        self.client.connection_lost()
        self.assertIn(("leave", "room", "alice", "phone", "7", False), self.store.calls)
        self.assertNotIn("room", self.harness.fanout.members)

    def test_unsubscribe_ends_membership(self) -> None:
        """unsubscribe drops the subscription, ends membership and answers."""
        self.connect()
        self.subscribe()
        self.client.on_text('{"type": "unsubscribe", "id": "u", "group": "room"}')
        self.assertIn(("unsubscribe", "alice", "phone", "room"), self.store.calls)
        self.assertIn(("leave", "room", "alice", "phone", "", True), self.store.calls)
        self.assertEqual(self.link.of_type("unsubscribed")[0]["id"], "u")
        self.assertNotIn("room", self.client.groups.members)

    def test_presence_events_only_for_sessions_that_asked(self) -> None:
        """join/leave events reach a member that subscribed with presence."""
        self.connect()
        self.subscribe("a", presence=True)
        self.subscribe("b")
        for group in ("a", "b"):
            self.harness.fanout.on_channel_message(
                keys.group_channel(group),
                json.dumps({"k": "join", "u": "bo", "s": "x", "n": "gw-2"}),
            )
        self.assertEqual(
            self.link.of_type("join"),
            [{"type": "join", "group": "a", "user": "bo", "session": "x"}],
        )


class RestoreRaceTests(SynchronousTestCase):
    """A connection that closes while its groups are being restored leaves them."""

    def test_close_during_restore_leaves_the_joined_groups(self) -> None:
        """Joins answered after the connection closed are left again (fenced by
        its epoch), and nothing is delivered."""
        harness = GroupHarness()
        joins: list[Deferred[object]] = []

        def slow_join(*args: object) -> Deferred[object]:
            d: Deferred[object] = Deferred()
            joins.append(d)
            return d

        harness.store.join = slow_join  # type: ignore[method-assign]
        client, link, pending = harness.connect()
        pending.callback(make_claim(7, subscriptions={"room": "4-0"}))
        client.connection_lost()
        joins[0].callback(Joined("9-0", "", True))
        self.assertIn(
            ("leave", "room", "alice", "phone", "7", False), harness.store.calls
        )
        self.assertEqual(link.frames, [])
        self.assertEqual(harness.store.reads, [])


class BackedUpOutputTests(SynchronousTestCase):
    """Group messages wait in the history while the connection is backed up."""

    def test_paused_output_holds_group_messages_until_it_drains(self) -> None:
        """A live group message for a backed-up connection is not written; once
        the output drains, the history is read from the last one written."""
        harness = GroupHarness()
        client, link = harness.online(7)
        client.on_text('{"type": "subscribe", "id": "s", "group": "room"}')
        harness.store.reads[0][1].callback([])
        client.output.pauseProducing()
        harness.fanout.on_channel_message(
            keys.group_channel("room"),
            json.dumps(
                {"k": "m", "id": "10-0", "p": "9-0", "f": "b", "t": "1", "b": "1"}
            ),
        )
        self.assertEqual(link.of_type("group_message"), [])
        self.assertEqual(len(harness.store.reads), 1)

        client.output.resumeProducing()
        (read, pending) = harness.store.reads[-1]
        self.assertEqual(read, ("room", "9-0", 256))
        pending.callback([make_entry("10-0")])
        self.assertEqual([m["id"] for m in link.of_type("group_message")], ["10-0"])


class PresenceBoundTests(SynchronousTestCase):
    """Presence answers fit in one WebSocket message however big the group."""

    def test_long_lists_are_cut_and_say_so(self) -> None:
        """Past the budget, members stop; count and complete tell the client."""
        from wsha.groups import PresenceEntry
        from wsha.session_groups import PRESENCE_FRAME_BUDGET, bounded_presence

        many = [PresenceEntry("u" * 128, f"s{i}", "1", "gw-1") for i in range(2000)]
        bounded = bounded_presence(many)
        self.assertEqual(bounded["count"], 2000)
        self.assertFalse(bounded["complete"])
        self.assertLess(len(json.dumps(bounded["members"])), PRESENCE_FRAME_BUDGET)
        few = bounded_presence(many[:3])
        self.assertEqual(
            (few["count"], few["complete"], len(few["members"])), (3, True, 3)
        )
