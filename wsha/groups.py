"""Groups (rooms) in Redis: histories, memberships, presence and subscriptions.

A group's keys share the hash tag ``{g:<group>}``; a session's subscriptions
live with its user's keys (``{u:<user>}``). The two never meet in one script:
each step is atomic in its own slot, the group side first, and the
consistency checker repairs what a step lost between them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.logger import Logger

from wsha import keys
from wsha.inbox import (
    Durability,
    InboxEntry,
    RedisCommands,
    confirm_replicated,
    parse_entry,
)
from wsha.lua import load


class NotAMember(Exception):
    """The publisher is not subscribed to the group it publishes to."""


@dataclass(frozen=True)
class GroupLimits:
    """How much a group's history keeps, and for how long.

    :param history_length: messages kept per group (exact).
    :param history_ttl: seconds a history lives after its last message.
    :param dedupe_ttl: seconds a publisher's client id is remembered.
    """

    history_length: int = 1000
    history_ttl: int = 7 * 24 * 3600
    dedupe_ttl: int = 24 * 3600


@dataclass(frozen=True)
class PublishResult:
    """What publishing did: the history id, and whether it was a retry."""

    id: str
    duplicate: bool


@dataclass(frozen=True)
class Joined:
    """A member joined a group: where the history is, and whether it is new there.

    :param head: the newest history id ('0-0' for an empty history).
    :param trimmed: the newest id the length limit removed ('' if none).
    :param joined: the member was not present before (a join event went out).
    """

    head: str
    trimmed: str
    joined: bool


@dataclass(frozen=True)
class PresenceEntry:
    """One online member of a group: its user, session, epoch and node."""

    user: str
    session: str
    epoch: str
    node: str


def event(kind: str, user: str, session: str, node: str) -> str:
    """A join or leave event as it travels on the group's channel."""
    return json.dumps(
        {"k": kind, "u": user, "s": session, "n": node}, separators=(",", ":")
    )


def split_member(member: str) -> tuple[str, str]:
    """The (user, session) of a member entry; raises ValueError if malformed."""
    user, sep, session = member.partition(" ")
    if not sep or not user or not session:
        raise ValueError(f"not a group member entry: {member!r}")
    return user, session


class GroupStore:
    """Reads and writes groups and session subscriptions in Redis.

    :param redis: the node's Redis service.
    :param limits: bounds of every group history.
    :param session_ttl: seconds a session's subscriptions live unused.
    :param durability: replicas that must confirm a publish before it counts.
    """

    log = Logger()

    _publish_script = load("group_publish")
    _join_script = load("group_join")
    _leave_script = load("group_leave")
    _subscribe_script = load("subscription_set")
    _ack_script = load("subscription_ack")
    _drop_script = load("subscription_drop")

    def __init__(
        self,
        redis: RedisCommands,
        limits: GroupLimits,
        session_ttl: int,
        durability: Durability | None = None,
    ):
        self._redis = redis
        self.limits = limits
        self.session_ttl = session_ttl
        self.durability = durability or Durability()

    @inlineCallbacks
    def publish(
        self,
        group: str,
        sender: str,
        client_id: str,
        body_json: str,
        ts: int,
        member: str = "",
    ) -> Any:
        """Store a message in the group's history and fan it out; fires PublishResult.

        :param member: the publishing session (``keys.member``), which must be
            subscribed; '' publishes without that check (the control API).
        :raises NotAMember: if ``member`` is not subscribed.
        """
        limits = self.limits
        reply = yield self._redis.eval(
            self._publish_script,
            [
                keys.group_history(group),
                keys.group_dedupe(group, sender, client_id),
                keys.group_trimmed(group),
                keys.group_members(group),
            ],
            [
                sender,
                body_json,
                limits.history_length,
                limits.history_ttl,
                limits.dedupe_ttl,
                ts,
                client_id,
                keys.group_channel(group),
                member,
            ],
        )
        entry_id, outcome = str(reply[0]), int(reply[1])
        if outcome < 0:
            raise NotAMember(f"not subscribed to {group}")
        yield confirm_replicated(self._redis, self.durability)
        return PublishResult(entry_id, outcome == 1)

    @inlineCallbacks
    def join(self, group: str, user: str, session: str, epoch: str, node: str) -> Any:
        """Make the session a member; present too unless ``epoch`` is ''.

        Fires :class:`Joined`.
        """
        reply = yield self._redis.eval(
            self._join_script,
            [
                keys.group_members(group),
                keys.group_presence(group),
                keys.group_history(group),
                keys.group_trimmed(group),
            ],
            [
                keys.member(user, session),
                epoch,
                node,
                keys.group_channel(group),
                event("join", user, session, node),
            ],
        )
        if int(reply[3]):
            # A new member: list the group for the consistency checker (a
            # rejoin on every reconnect need not). A lost one delays its check.
            self._redis.execute_command("SADD", keys.known_groups(), group).addErrback(
                self._unlisted, group
            )
        return Joined(str(reply[0]), str(reply[1]), bool(int(reply[2])))

    def _unlisted(self, reason: Any, group: str) -> None:
        self.log.debug(
            "Group {group} not listed for the checker: {error}",
            group=group,
            error=reason.getErrorMessage(),
        )

    @inlineCallbacks
    def leave(
        self,
        group: str,
        user: str,
        session: str,
        epoch: str,
        node: str,
        end_membership: bool = False,
    ) -> Any:
        """Take the session's presence away if ``epoch`` holds it ('' = any).

        Fires True if it was present (a leave event went out). With
        ``end_membership`` the session stops being a member too.
        """
        reply = yield self._redis.eval(
            self._leave_script,
            [keys.group_presence(group), keys.group_members(group)],
            [
                keys.member(user, session),
                epoch,
                keys.group_channel(group),
                event("leave", user, session, node),
                "1" if end_membership else "0",
            ],
        )
        return bool(int(reply))

    @inlineCallbacks
    def leave_all(self, user: str, session: str, epoch: str, node: str) -> Any:
        """Take the session's presence away from all its groups if ``epoch`` holds it.

        For a session whose node died; fires how many groups it left.
        """
        groups = yield self.subscriptions(user, session)
        left = yield gatherResults(
            [self.leave(group, user, session, epoch, node) for group in sorted(groups)],
            consumeErrors=True,
        )
        return sum(left)

    @inlineCallbacks
    def subscribe(
        self,
        user: str,
        session: str,
        group: str,
        start: str,
        after: str | None,
        presence: bool,
    ) -> Any:
        """Record the session's subscription; fires the id it resumes after.

        :param start: where a new subscription starts (the history's head).
        :param after: where the client asked to start; None keeps a stored one.
        """
        position = yield self._redis.eval(
            self._subscribe_script,
            [
                keys.subscriptions(user, session),
                keys.presence_subscriptions(user, session),
            ],
            [group, start, after or "", "1" if presence else "0", self.session_ttl],
        )
        return str(position)

    @inlineCallbacks
    def unsubscribe(self, user: str, session: str, group: str) -> Any:
        """Forget the session's subscription; fires True if it had one."""
        reply = yield self._redis.eval(
            self._drop_script,
            [
                keys.subscriptions(user, session),
                keys.presence_subscriptions(user, session),
            ],
            [group],
        )
        return bool(int(reply))

    @inlineCallbacks
    def subscriptions(self, user: str, session: str) -> Any:
        """Fire with the session's subscriptions: group to resume position."""
        flat = yield self._redis.execute_command(
            "HGETALL", keys.subscriptions(user, session)
        )
        if isinstance(flat, dict):
            return {str(k): str(v) for k, v in flat.items()}
        items = list(flat or ())
        return {str(k): str(v) for k, v in zip(items[::2], items[1::2], strict=True)}

    @inlineCallbacks
    def presence_subscriptions(self, user: str, session: str) -> Any:
        """Fire with the groups whose presence events the session receives."""
        reply = yield self._redis.execute_command(
            "SMEMBERS", keys.presence_subscriptions(user, session)
        )
        return {str(g) for g in reply or ()}

    @inlineCallbacks
    def acknowledge(
        self, user: str, session: str, epoch: str, group: str, upto: str
    ) -> Any:
        """Move the session's position in ``group`` to ``upto``; fires True if moved."""
        reply = yield self._redis.eval(
            self._ack_script,
            [
                keys.session(user, session),
                keys.subscriptions(user, session),
                keys.sessions(user),
                keys.online(user),
                keys.presence_subscriptions(user, session),
            ],
            [epoch, group, upto, self.session_ttl],
        )
        return bool(int(reply))

    @inlineCallbacks
    def read_after(self, group: str, after: str, count: int) -> Any:
        """Fire with up to ``count`` history entries strictly after ``after``."""
        reply = yield self._redis.execute_command(
            "XRANGE", keys.group_history(group), "(" + after, "+", "COUNT", count
        )
        if reply:
            yield confirm_replicated(self._redis, self.durability)
        return [parse_entry(raw) for raw in reply or ()]

    @inlineCallbacks
    def members(self, group: str) -> Any:
        """Fire with the group's member entries (``<user> <session>``), sorted."""
        reply = yield self._redis.execute_command("SMEMBERS", keys.group_members(group))
        return sorted(str(m) for m in reply or ())

    @inlineCallbacks
    def presence(self, group: str) -> Any:
        """Fire with the group's presence entries as :class:`PresenceEntry`, sorted.

        Entries of dead nodes are still listed; callers filter by liveness.
        """
        flat = yield self._redis.execute_command("HGETALL", keys.group_presence(group))
        pairs = flat.items() if isinstance(flat, dict) else flat_pairs(flat)
        found = []
        for member, holder in pairs:
            try:
                user, session = split_member(str(member))
            except ValueError:
                continue
            epoch, _, node = str(holder).partition(" ")
            found.append(PresenceEntry(user, session, epoch, node))
        return sorted(found, key=lambda e: (e.user, e.session))


def flat_pairs(flat: Any) -> list[tuple[Any, Any]]:
    """Pair up a flat Redis reply (HGETALL's ``[k1, v1, k2, v2, ...]``)."""
    items = list(flat or ())
    return list(zip(items[::2], items[1::2], strict=True))


def group_entry(payload: dict[str, Any]) -> tuple[InboxEntry, str]:
    """The history entry and previous id carried by a message on a group channel.

    :raises ValueError: if the payload is not such a message.
    """
    try:
        entry = InboxEntry(
            id=str(payload["id"]),
            sender=str(payload["f"]),
            body_json=str(payload["b"]),
            ts=int(payload["t"]),
            client_id="",
        )
        return entry, str(payload["p"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not a group message: {e}") from e
