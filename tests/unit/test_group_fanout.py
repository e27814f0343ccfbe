"""Unit tests for :class:`wsha.services.group_fanout.GroupFanout`, on a fake link."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from wsha import keys
from wsha.inbox import InboxEntry
from wsha.services.group_fanout import GroupFanout
from wsha.services.redis_link import LinkSettings


class FakeSubscriber:
    """A subscribed connection whose SUBSCRIBE/UNSUBSCRIBE replies the test fires."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, str, Deferred[Any]]] = []

    def subscribe(self, channel: str) -> Deferred[Any]:
        """Record a SUBSCRIBE."""
        d: Deferred[Any] = Deferred()
        self.commands.append(("subscribe", channel, d))
        return d

    def unsubscribe(self, channel: str) -> Deferred[Any]:
        """Record an UNSUBSCRIBE."""
        d: Deferred[Any] = Deferred()
        self.commands.append(("unsubscribe", channel, d))
        return d

    def answer(self) -> None:
        """Confirm the oldest unanswered command."""
        for _, _, d in self.commands:
            if not d.called:
                d.callback(["ok"])
                return
        raise AssertionError("no command waiting")


class Member:
    """A group listener recording what the fan-out hands it."""

    def __init__(self) -> None:
        self.offered: list[tuple[str, str]] = []
        self.pokes = 0
        self.events: list[tuple[str, str, str]] = []

    def offer(self, entry: InboxEntry, previous: str) -> None:
        """Record an offered entry."""
        self.offered.append((entry.id, previous))

    def poke(self) -> None:
        """Count a poke."""
        self.pokes += 1

    def presence_event(self, kind: str, user: str, session: str) -> None:
        """Record a presence event."""
        self.events.append((kind, user, session))


def message(entry_id: str, previous: str) -> str:
    """A group message as the publish script puts it on the channel."""
    return json.dumps(
        {"k": "m", "id": entry_id, "p": previous, "f": "ann", "t": "5", "b": "1"}
    )


class GroupFanoutTests(SynchronousTestCase):
    """Subscriptions follow local members, one command at a time."""

    def setUp(self) -> None:
        self.fanout = GroupFanout(None, LinkSettings())  # type: ignore[arg-type]
        self.link = FakeSubscriber()
        self.fanout.link_up(self.link)

    def test_first_member_subscribes_and_is_poked_once_confirmed(self) -> None:
        """The first member of a group subscribes its channel; once confirmed the
        member reads the history (what came before the subscription)."""
        member = Member()
        self.fanout.attach("room", member)
        self.assertEqual(
            [(c[0], c[1]) for c in self.link.commands],
            [("subscribe", keys.group_channel("room"))],
        )
        self.assertEqual(member.pokes, 0)
        self.link.answer()
        self.assertEqual(member.pokes, 1)
        self.assertEqual(self.fanout.subscribed, {"room"})

    def test_commands_run_one_at_a_time(self) -> None:
        """A second group's SUBSCRIBE waits for the first one's confirmation."""
        self.fanout.attach("a", Member())
        self.fanout.attach("b", Member())
        self.assertEqual(len(self.link.commands), 1)
        self.link.answer()
        self.assertEqual(len(self.link.commands), 2)

    def test_last_member_leaving_unsubscribes(self) -> None:
        """The channel is dropped when its last local member detaches, not before."""
        first, second = Member(), Member()
        self.fanout.attach("room", first)
        self.fanout.attach("room", second)
        self.link.answer()
        self.fanout.detach("room", first)
        self.assertEqual(len(self.link.commands), 1)
        self.fanout.detach("room", second)
        self.assertEqual(self.link.commands[-1][0], "unsubscribe")
        self.link.answer()
        self.assertEqual(self.fanout.subscribed, set())

    def test_member_back_before_unsubscribe_confirms_resubscribes(self) -> None:
        """A member that comes back while the UNSUBSCRIBE is in flight gets the
        channel subscribed again afterwards."""
        member = Member()
        self.fanout.attach("room", member)
        self.link.answer()
        self.fanout.detach("room", member)
        self.fanout.attach("room", member)
        self.link.answer()
        self.assertEqual(self.link.commands[-1][0], "subscribe")
        self.link.answer()
        self.assertEqual(self.fanout.subscribed, {"room"})

    def test_messages_and_presence_reach_local_members(self) -> None:
        """A message goes to every member with its previous id; join and leave
        events go to every member; other groups' messages to no one."""
        member = Member()
        self.fanout.attach("room", member)
        self.link.answer()
        channel = keys.group_channel("room")
        self.fanout.on_channel_message(channel, message("5-0", "4-0"))
        self.fanout.on_channel_message(
            channel, json.dumps({"k": "join", "u": "bo", "s": "p", "n": "gw"})
        )
        self.fanout.on_channel_message(
            keys.group_channel("other"), message("9-0", "0-0")
        )
        self.fanout.on_channel_message(channel, "{not json")
        self.assertEqual(member.offered, [("5-0", "4-0")])
        self.assertEqual(member.events, [("join", "bo", "p")])

    def test_reconnect_resubscribes_everything_and_catches_up(self) -> None:
        """After the link is remade every group is subscribed again and each
        member reads its history once its group is confirmed."""
        member = Member()
        self.fanout.attach("room", member)
        self.link.answer()
        self.fanout.link_down(self.link)
        self.assertEqual(self.fanout.subscribed, set())
        fresh = FakeSubscriber()
        self.fanout.link_up(fresh)
        self.assertEqual(
            fresh.commands[0][:2], ("subscribe", keys.group_channel("room"))
        )
        fresh.answer()
        self.assertEqual(member.pokes, 2)

    def test_stray_subscription_is_reported_and_repaired(self) -> None:
        """A channel subscribed with no member left is listed as drift and
        dropped by repair."""
        member = Member()
        self.fanout.attach("room", member)
        self.link.answer()
        del self.fanout.members["room"]
        self.assertEqual(self.fanout.groups_without_members(), ["room"])
        self.fanout.repair("room")
        self.link.answer()
        self.assertEqual(self.fanout.groups_without_members(), [])


class BrokenMemberTests(SynchronousTestCase):
    """A member that fails does not cost the others a message."""

    def test_other_members_still_get_the_message(self) -> None:
        """A member raising while it is offered a message is logged; the
        members after it still get that message."""

        class Broken(Member):
            def offer(self, entry: InboxEntry, previous: str) -> None:
                raise RuntimeError("link gone")

        fanout = GroupFanout(None, LinkSettings())  # type: ignore[arg-type]
        link = FakeSubscriber()
        fanout.link_up(link)
        broken, healthy = Broken(), Member()
        fanout.attach("room", broken)
        fanout.attach("room", healthy)
        link.answer()
        fanout.on_channel_message(keys.group_channel("room"), message("5-0", "4-0"))
        self.assertEqual(healthy.offered, [("5-0", "4-0")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
