"""GroupFanout: the node's Redis Pub/Sub link, subscribed to its members' groups.

A node listens on a group's channel only while at least one of its sessions
is a member (reference-counted). The link has a connection of its own (a
subscribed connection runs no other command) and reconnects by itself; after
any reconnect it subscribes again and makes every member read its group's
history, which fills whatever was published while the link was down.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Protocol

import txredisapi
from twisted.application import service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from wsha import keys
from wsha.groups import group_entry
from wsha.inbox import InboxEntry
from wsha.services.redis_link import LinkSettings, RedisTarget


class GroupListener(Protocol):
    """One local member of a group, as the fan-out sees it."""

    def offer(self, entry: InboxEntry, previous: str) -> None:
        """A message was published; ``previous`` is the history id before it."""

    def poke(self) -> None:
        """Read the group's history: messages may have been missed."""

    def presence_event(self, kind: str, user: str, session: str) -> None:
        """A member joined or left the group (``kind`` is ``join`` or ``leave``)."""


class ChannelSubscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]
    """txredisapi's subscriber protocol, handing messages to the link's watcher."""

    def messageReceived(self, pattern: Any, channel: str, message: str) -> None:
        """Pass one Pub/Sub message on to the :class:`GroupFanout`."""
        self.factory.watcher.on_channel_message(str(channel), str(message))


class GroupFanout(service.Service):
    """Keeps the node subscribed to exactly the groups it has members of.

    Subscribes and unsubscribes run one at a time, in order, so each
    confirmation belongs to its own command; once a group's subscription is
    confirmed its members read the history, which covers what was published
    before the node was listening.

    :param target: where Redis is (the same server or Sentinel master as the
        node's command connection).
    :param settings: the link's timeouts and reconnect bound.
    """

    log = Logger()

    def __init__(self, target: RedisTarget, settings: LinkSettings):
        self._target = target
        self._settings = settings
        self.members: dict[str, set[GroupListener]] = defaultdict(set)
        self.subscribed: set[str] = set()
        self._handler: Any = None
        self._connection: Any = None
        self._busy = False
        self._dirty: set[str] = set()

    def startService(self) -> Deferred[None]:
        """Open the link; the node does not wait for it (members catch up)."""
        service.Service.startService(self)
        self._handler = self._target.open(
            self, self._settings, protocol=ChannelSubscriber
        )
        return succeed(None)

    def stopService(self) -> Deferred[Any]:
        """Close the link; fires once it is closed."""
        service.Service.stopService(self)
        handler, self._handler = self._handler, None
        self._connection = None
        if handler is None:
            return succeed(None)
        d: Deferred[Any] = handler.disconnect()
        return d

    # Members

    def attach(self, group: str, member: GroupListener) -> None:
        """Count ``member`` in ``group``; subscribe to its channel if first."""
        self.members[group].add(member)
        if group not in self.subscribed:
            self._mark(group)

    def detach(self, group: str, member: GroupListener) -> None:
        """Stop counting ``member``; unsubscribe from the channel if it was last."""
        members = self.members.get(group)
        if members is None:
            return
        members.discard(member)
        if not members:
            del self.members[group]
            self._mark(group)

    def poke_all(self) -> None:
        """Make every local member read its group's history (the safety sweep)."""
        for members in list(self.members.values()):
            for member in list(members):
                member.poke()

    def groups_without_members(self) -> list[str]:
        """Channels subscribed with no local member left (drift to repair)."""
        return sorted(g for g in self.subscribed if not self.members.get(g))

    def repair(self, group: str) -> None:
        """Bring ``group``'s subscription back in line with its members."""
        self._mark(group)

    # The link (LinkWatcher)

    def link_up(self, connection: Any) -> None:
        """Subscribed anew after a (re)connect: every group, then a catch-up."""
        self._connection = connection
        self.subscribed.clear()
        self._busy = False
        self._dirty = set(self.members)
        self.log.info(
            "Group Pub/Sub link up; subscribing to {groups} groups",
            groups=len(self._dirty),
        )
        self._reconcile()

    def link_down(self, connection: Any) -> None:
        """The link is gone: nothing is subscribed until it is back."""
        if connection is self._connection:
            self._connection = None
            self.subscribed.clear()
            self.log.warn("Group Pub/Sub link lost; reconnecting")

    def on_channel_message(self, channel: str, message: str) -> None:
        """Hand a message of a group's channel to the group's local members."""
        group = _group_of(channel)
        members = self.members.get(group or "")
        if group is None or not members:
            return
        try:
            payload = json.loads(message)
            kind = payload["k"]
        except (ValueError, KeyError, TypeError):
            self.log.warn("Ignoring a malformed message on {channel}", channel=channel)
            return
        if kind == "m":
            try:
                entry, previous = group_entry(payload)
            except ValueError as e:
                self.log.warn("Ignoring {channel}: {error}", channel=channel, error=e)
                return
            for member in list(members):
                try:
                    member.offer(entry, previous)
                except Exception:
                    # One member's broken link must not cost the others
                    # this message, nor stop the link's message handling.
                    self.log.failure("Group {group} delivery failed", group=group)
        elif kind in ("join", "leave"):
            user, session = str(payload.get("u", "")), str(payload.get("s", ""))
            for member in list(members):
                member.presence_event(kind, user, session)

    # Keeping the subscriptions in line with the members, one command at a time

    def _mark(self, group: str) -> None:
        self._dirty.add(group)
        self._reconcile()

    def _reconcile(self) -> None:
        while self._dirty and not self._busy and self._connection is not None:
            group = self._dirty.pop()
            wanted = bool(self.members.get(group))
            if wanted == (group in self.subscribed):
                continue
            self._busy = True
            connection = self._connection
            channel = keys.group_channel(group)
            if wanted:
                d = connection.subscribe(channel)
            else:
                d = connection.unsubscribe(channel)
            d.addCallbacks(
                self._changed,
                self._change_failed,
                callbackArgs=(connection, group, wanted),
                errbackArgs=(connection, group),
            )
            return

    def _changed(self, _: Any, connection: Any, group: str, wanted: bool) -> None:
        if connection is not self._connection:
            return
        self._busy = False
        if wanted:
            self.subscribed.add(group)
            # Published before the subscription took effect: in the history.
            for member in list(self.members.get(group, ())):
                member.poke()
        else:
            self.subscribed.discard(group)
        self._dirty.add(group)
        self._reconcile()

    def _change_failed(self, reason: Any, connection: Any, group: str) -> None:
        if connection is not self._connection:
            return
        self._busy = False
        self.log.warn(
            "Pub/Sub change for group {group} failed, dropping the link: {error}",
            group=group,
            error=reason.getErrorMessage(),
        )
        # A reconnect resubscribes everything from scratch.
        transport = getattr(connection, "transport", None)
        if transport is not None:
            transport.loseConnection()


_CHANNEL_HEAD = keys.group_channel("\0").split("\0")[0]
_CHANNEL_TAIL = keys.group_channel("\0").split("\0")[1]


def _group_of(channel: str) -> str | None:
    if channel.startswith(_CHANNEL_HEAD) and channel.endswith(_CHANNEL_TAIL):
        return channel[len(_CHANNEL_HEAD) : len(channel) - len(_CHANNEL_TAIL)]
    return None
