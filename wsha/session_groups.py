"""SessionGroups: one connection's group subscriptions, presence and publishes.

A session's subscriptions are stored with its user's keys, so they follow the
session to whichever node it reconnects to: the new node restores each one
(after the position the session acknowledged) before it sends ``welcome``.
Each group is read like the inbox, by a :class:`SessionDelivery` of its own,
fed live by the node's :class:`GroupFanout`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.logger import Logger

from wsha import keys, metrics, wire
from wsha.delivery import SessionDelivery
from wsha.groups import GroupStore, PresenceEntry
from wsha.inbox import InboxEntry
from wsha.services.group_fanout import GroupFanout
from wsha.services.redis_service import RedisUnavailable
from wsha.sessions import Claim

if TYPE_CHECKING:
    from wsha.client_session import ClientSession
    from wsha.gateway import LiveNodes

MAX_GROUPS_PER_SESSION = 256
"""Groups one session may be subscribed to at once."""


@dataclass
class GroupHub:
    """What a node's sessions share for groups: the store, the fan-out, liveness.

    :param store: groups and subscriptions in Redis.
    :param fanout: the node's Pub/Sub link.
    :param live_nodes: which nodes are alive (presence of dead ones is hidden).
    :param max_groups: groups one session may be subscribed to.
    """

    store: GroupStore
    fanout: GroupFanout
    live_nodes: LiveNodes
    max_groups: int = MAX_GROUPS_PER_SESSION

    @inlineCallbacks
    def online(self, group: str) -> Any:
        """Fire with the group's present members on live nodes."""
        entries = yield self.store.presence(group)
        return [e for e in entries if self.live_nodes.is_live(e.node)]


@lru_cache(maxsize=4096)
def _group_frame(group: str, entry_id: str, sender: str, body: str, ts: int) -> bytes:
    # A message fanned out to many local members is encoded once.
    return wire.encode_group_message(group, entry_id, sender, body, ts)


PRESENCE_FRAME_BUDGET = 64 * 1024
"""Bytes of member entries one presence answer carries at most (frames are bounded)."""


def presence_list(entries: list[PresenceEntry]) -> list[dict[str, str]]:
    """Present members as they appear in frames and control-API answers."""
    return [{"user": e.user, "session": e.session, "node": e.node} for e in entries]


def bounded_presence(entries: list[PresenceEntry]) -> dict[str, Any]:
    """The ``members`` of a presence frame, cut to fit a WebSocket message.

    ``count`` is how many are online; ``complete`` is false when ``members``
    lists only the first of them (by user, then session).
    """
    members: list[dict[str, str]] = []
    size = 0
    for member in presence_list(entries):
        size += len(member["user"]) + len(member["session"]) + len(member["node"]) + 48
        if size > PRESENCE_FRAME_BUDGET:
            break
        members.append(member)
    return {
        "members": members,
        "count": len(entries),
        "complete": len(members) == len(entries),
    }


class GroupMember:
    """One session's membership of one group on this node.

    :param client: the session's connection.
    :param group: the group.
    :param store: where the group's history is read.
    :param position: the history id the session has seen.
    :param presence: the session receives the group's join and leave events.
    """

    def __init__(
        self,
        client: ClientSession,
        group: str,
        store: GroupStore,
        position: str,
        presence: bool,
    ):
        self.client = client
        self.group = group
        self.presence = presence
        self.delivery = SessionDelivery(
            store,
            group,
            position,
            self.deliver,
            client.gateway.clock,
            writable=lambda: client.output.writable,
            route=metrics.ROUTE_HISTORY,
        )

    def offer(self, entry: InboxEntry, previous: str) -> None:
        """A live message: sent at once if it is the next one, else pulled."""
        self.delivery.offer(entry, previous)

    def poke(self) -> None:
        """Read the group's history after what this session was sent."""
        self.delivery.poke(metrics.ROUTE_HISTORY)

    def presence_event(self, kind: str, user: str, session: str) -> None:
        """Tell the client who joined or left, if it asked to know."""
        if self.presence:
            self.client.send_frame(
                {"type": kind, "group": self.group, "user": user, "session": session}
            )

    def deliver(self, entries: list[InboxEntry]) -> int:
        """Write history entries as ``group_message`` frames; return how many.

        Writing stops once the connection backs up; the history keeps the rest.
        """
        written = 0
        for e in entries:
            if self.client.closed or not self.client.output.writable:
                break
            self.client.send_bytes(
                _group_frame(self.group, e.id, e.sender, e.body_json, e.ts)
            )
            route = self.delivery.route
            self.client.ledger.written(metrics.GROUP, self.group, e.id, e.ts, route)
            written += 1
        return written


class SessionGroups:
    """The groups of one connection.

    :param client: the connection.
    :param hub: the node's group parts.
    """

    log = Logger()

    def __init__(self, client: ClientSession, hub: GroupHub):
        self.client = client
        self.hub = hub
        self.members: dict[str, GroupMember] = {}
        self.closed = False
        self._restored: list[tuple[str, str, bool]] = []

    @property
    def _node(self) -> str:
        return self.client.gateway.node_id

    @inlineCallbacks
    def restore(self, claim: Claim) -> Any:
        """Rejoin every group the session is subscribed to; fires welcome's ``groups``.

        Each group resumes after the position the session acknowledged there,
        or after the last id the client says it saw if that is later, once
        :meth:`go_live` is called (after the welcome is sent).
        """
        groups = sorted(claim.subscriptions)
        if len(groups) > self.hub.max_groups:
            # Only the control API can get a session past the limit (before
            # it was enforced there too): serve the first ones, say so.
            self.log.warn(
                "Session {user}/{session} has {count} groups; restoring {limit}",
                user=self.client.user,
                session=self.client.session,
                count=len(groups),
                limit=self.hub.max_groups,
            )
            groups = groups[: self.hub.max_groups]
        joined = yield gatherResults(
            [self._join(group) for group in groups], consumeErrors=True
        )
        restored = {}
        for group, (head, trimmed) in zip(groups, joined, strict=True):
            position = _later(
                claim.subscriptions[group], self.client.group_after.get(group)
            )
            self._restored.append((group, position, group in claim.presence_groups))
            restored[group] = {
                "after": position,
                "truncated": _lost(trimmed, position, head),
            }
        return restored

    def go_live(self) -> None:
        """Start delivering the restored groups: nothing may precede ``welcome``."""
        restored, self._restored = self._restored, []
        for group, position, presence in restored:
            if group not in self.members and not self.closed:
                self._attach(group, position, presence)

    @inlineCallbacks
    def subscribe(self, frame: wire.Subscribe) -> Any:
        """Serve a ``subscribe`` to a group: store it, join, answer, then deliver."""
        group = frame.group
        assert group is not None
        if group not in self.members and len(self.members) >= self.hub.max_groups:
            self._error(
                frame.id, "too_many_subscriptions", f"over {self.hub.max_groups}"
            )
            return
        client = self.client
        try:
            head, trimmed = yield self._join(group)
            position = yield self.hub.store.subscribe(
                client.user, client.session, group, head, frame.after, frame.presence
            )
        except Exception as e:
            self._failed(frame.id, "subscribe", group, e)
            return
        if self.closed:
            return
        current = self.members.get(group)
        if current is not None:
            current.presence = frame.presence
            if frame.after is not None:
                # Moved on purpose: read again from the position asked for.
                self._detach(group)
                current = None
        answer: dict[str, Any] = {
            "type": "subscribed",
            "group": group,
            "after": position,
            "truncated": _lost(trimmed, position, head),
        }
        if frame.id is not None:
            answer["id"] = frame.id
        if frame.presence:
            online = yield self.hub.online(group)
            bounded = bounded_presence(online)
            answer["presence"] = bounded["members"]
            answer["presence_complete"] = bounded["complete"]
        client.send_frame(answer)
        if current is None and not self.closed:
            self._attach(group, position, frame.presence)

    @inlineCallbacks
    def unsubscribe(self, frame: wire.Unsubscribe) -> Any:
        """Serve an ``unsubscribe``: no more messages, membership and presence end."""
        group = frame.group
        assert group is not None
        client = self.client
        self._detach(group)
        try:
            yield self.hub.store.unsubscribe(client.user, client.session, group)
            yield self.hub.store.leave(
                group, client.user, client.session, "", self._node, end_membership=True
            )
        except Exception as e:
            self._failed(frame.id, "unsubscribe", group, e)
            return
        answer: dict[str, Any] = {"type": "unsubscribed", "group": group}
        if frame.id is not None:
            answer["id"] = frame.id
        client.send_frame(answer)

    @inlineCallbacks
    def presence(self, frame: wire.PresenceQuery) -> Any:
        """Answer a ``presence`` request of a member with who is online."""
        if frame.group not in self.members:
            self._error(frame.id, "not_subscribed", f"not in group {frame.group}")
            return
        try:
            online = yield self.hub.online(frame.group)
        except Exception as e:
            self._failed(frame.id, "presence", frame.group, e)
            return
        answer: dict[str, Any] = {
            "type": "presence",
            "group": frame.group,
            **bounded_presence(online),
        }
        if frame.id is not None:
            answer["id"] = frame.id
        self.client.send_frame(answer)

    def acknowledge(self, group: str, upto: str) -> None:
        """Record the session's position in ``group`` (only up to what was sent)."""
        member = self.members.get(group)
        if member is None:
            self._error(None, "not_subscribed", f"not in group {group}")
            return
        if wire.stream_id_key(upto) > wire.stream_id_key(member.delivery.last_sent):
            self._error(None, "bad_frame", "ack beyond the last group message sent")
            return
        client = self.client
        client.ledger.acknowledged(metrics.GROUP, group, upto)
        d = self.hub.store.acknowledge(
            client.user, client.session, str(client.epoch), group, upto
        )
        d.addErrback(self._log_failure, "group ack", group)

    def publish(self, frame: wire.Publish) -> Deferred[Any]:
        """Store a ``publish`` in the group's history; fires PublishResult."""
        client = self.client
        d: Deferred[Any] = self.hub.store.publish(
            frame.group,
            client.user,
            frame.id,
            wire.encode_body(frame.body),
            int(client.gateway.clock.seconds() * 1000),
            member=keys.member(client.user, client.session),
        )
        return d

    @inlineCallbacks
    def reload(self) -> Any:
        """Follow subscriptions changed elsewhere (the control API).

        New ones are joined and announced with ``subscribed``, dropped ones
        stop and are announced with ``unsubscribed``; neither carries an ``id``.
        """
        client = self.client
        try:
            stored = yield self.hub.store.subscriptions(client.user, client.session)
            presence = yield self.hub.store.presence_subscriptions(
                client.user, client.session
            )
        except Exception as e:
            self._failed(None, "reload", "subscriptions", e)
            return
        for group in sorted(set(self.members) - set(stored)):
            self._detach(group)
            client.send_frame({"type": "unsubscribed", "group": group})
        for group, member in self.members.items():
            member.presence = group in presence
        for group in sorted(set(stored) - set(self.members)):
            try:
                head, trimmed = yield self._join(group)
            except Exception as e:
                self._failed(None, "subscribe", group, e)
                continue
            if self.closed or group in self.members:
                continue
            position = stored[group]
            client.send_frame(
                {
                    "type": "subscribed",
                    "group": group,
                    "after": position,
                    "truncated": _lost(trimmed, position, head),
                }
            )
            self._attach(group, position, group in presence)

    def resume_held(self) -> None:
        """The connection drained: read again the groups that stopped for it."""
        for member in list(self.members.values()):
            if member.delivery.held:
                member.poke()

    def poke_all(self) -> None:
        """Read every group's history again (after a store outage)."""
        for member in self.members.values():
            member.poke()

    def close(self) -> Deferred[Any]:
        """The connection is gone: stop delivering and leave presence (fenced)."""
        self.closed = True
        client = self.client
        epoch = str(client.epoch)
        leaving = []
        # Restored groups not live yet were joined too.
        restored, self._restored = [g for g, _, _ in self._restored], []
        for group in list(self.members) + restored:
            self._detach(group)
            d = self.hub.store.leave(
                group, client.user, client.session, epoch, self._node
            )
            d.addErrback(self._log_failure, "leave", group)
            leaving.append(d)
        return gatherResults(leaving)

    def _join(self, group: str) -> Deferred[tuple[str, str]]:
        client = self.client
        d: Deferred[Any] = self.hub.store.join(
            group, client.user, client.session, str(client.epoch), self._node
        )
        return d.addCallback(lambda joined: (joined.head, joined.trimmed))

    def _attach(self, group: str, position: str, presence: bool) -> None:
        member = GroupMember(self.client, group, self.hub.store, position, presence)
        self.members[group] = member
        self.hub.fanout.attach(group, member)
        member.poke()

    def _detach(self, group: str) -> None:
        member = self.members.pop(group, None)
        if member is not None:
            member.delivery.stop()
            self.hub.fanout.detach(group, member)
            self.client.ledger.forget(metrics.GROUP, group)

    def _error(self, frame_id: str | None, code: str, message: str) -> None:
        self.client.send_frame(wire.error_frame(code, message, frame_id))

    def _failed(
        self, frame_id: str | None, step: str, group: str, e: Exception
    ) -> None:
        if isinstance(e, RedisUnavailable):
            self._error(frame_id, "unavailable", f"{step} of {group} not done")
            return
        self.log.warn(
            "Group {step} of {group} failed: {error}",
            step=step,
            group=group,
            error=str(e),
        )
        self._error(frame_id, "internal", f"{step} of {group} not done")

    def _log_failure(self, reason: Any, step: str, group: str) -> None:
        emit = self.log.debug if reason.check(RedisUnavailable) else self.log.warn
        emit(
            "Group {step} of {group} for {user}/{session} failed: {error}",
            step=step,
            group=group,
            user=self.client.user,
            session=self.client.session,
            error=reason.getErrorMessage(),
        )


def _later(stored: str, seen: str | None) -> str:
    # The client's own last id wins when it is ahead of its last ack.
    if seen is not None and wire.stream_id_key(seen) > wire.stream_id_key(stored):
        return seen
    return stored


def _lost(trimmed: str, position: str, head: str) -> bool:
    # Messages after the position are gone if the limit trimmed a newer one,
    # or if the whole history expired after the session had seen some of it.
    if position != "0-0" and head == "0-0":
        return True
    return bool(trimmed) and wire.stream_id_key(trimmed) > wire.stream_id_key(position)
