"""Who holds which session: claims with fencing epochs (invariant 3)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger

from wsha import keys
from wsha.inbox import RedisCommands
from wsha.lua import load


class SessionLimitReached(Exception):
    """The user already has as many sessions online as allowed."""

    def __init__(self, online: int):
        super().__init__(f"{online} sessions of this user are online already")
        self.online = online


@dataclass(frozen=True)
class Claim:
    """The outcome of claiming a session for this node.

    ``subscriptions`` maps each group the session is subscribed to onto the
    group history id it resumes after; ``presence_groups`` are those whose
    join and leave events it receives.
    """

    epoch: str
    previous_node: str
    previously_online: bool
    replay_after: str
    pending: int
    trimmed: bool
    resumed: bool
    subscriptions: dict[str, str] = field(default_factory=dict)
    presence_groups: frozenset[str] = frozenset()


@dataclass(frozen=True)
class SessionInfo:
    """One session of a user as stored: where it is and how far it acknowledged."""

    session: str
    node: str
    online: bool
    epoch: str
    cursor: str
    seen: int


def index_entry(user: str, session: str, epoch: str) -> str:
    """The entry naming one claim in its node's session index."""
    return json.dumps([user, session, int(epoch)], separators=(",", ":"))


def parse_index_entry(entry: str) -> tuple[str, str, str]:
    """The (user, session, epoch) of an index entry; raises ValueError if malformed."""
    try:
        user, session, epoch = json.loads(entry)
    except (TypeError, ValueError) as e:
        raise ValueError(f"not a session index entry: {entry!r}") from e
    if not (isinstance(user, str) and isinstance(session, str)):
        raise ValueError(f"not a session index entry: {entry!r}")
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        raise ValueError(f"not a session index entry: {entry!r}")
    return user, session, str(epoch)


class SessionRegistry:
    """Claims, releases and acknowledges sessions, fenced by epoch.

    Each claim is also entered in its node's session index (a separate step:
    node keys and user keys never meet in one script), so that the survivors
    of a dead node find its sessions. The index may drift from the sessions;
    cleanup checks every entry against the session before touching it.

    :param redis: a connected txredisapi connection or pool.
    :param ttl_seconds: how long an idle session's state (cursor) is kept.
    :param replay_cap: the most pending entries counted when a session is claimed.
    :param node_id: the node whose session index releases update.
    :param max_sessions: the most sessions a user may have online at once (0: any).
    """

    log = Logger()

    _claim_script = load("claim")
    _release_script = load("release")
    _ack_script = load("ack")
    _orphan_script = load("orphan")

    def __init__(
        self,
        redis: RedisCommands,
        ttl_seconds: int,
        replay_cap: int = 10_000,
        node_id: str = "",
        max_sessions: int = 0,
    ):
        self._redis = redis
        self.max_sessions = max_sessions
        self.ttl_seconds = ttl_seconds
        self.replay_cap = replay_cap
        self.node_id = node_id

    @inlineCallbacks
    def claim(self, user: str, session: str, node: str, after: str | None) -> Any:
        """Make ``node`` the session's owner with a new epoch; fires :class:`Claim`.

        :raises SessionLimitReached: if the session is not online yet and the
            user has ``max_sessions`` online already.
        """
        reply = yield self._redis.eval(
            self._claim_script,
            [
                keys.session(user, session),
                keys.sessions(user),
                keys.online(user),
                keys.inbox(user),
                keys.trimmed(user),
                keys.subscriptions(user, session),
                keys.presence_subscriptions(user, session),
            ],
            [
                session,
                node,
                after or "",
                self.ttl_seconds,
                self.replay_cap,
                self.max_sessions,
            ],
        )
        if reply[0] == "limit":
            raise SessionLimitReached(int(reply[1]))
        epoch, prev_node, prev_online, replay_after, pending, trimmed, existed = reply[
            :7
        ]
        subscriptions = _as_dict(reply[7])
        presence_groups = frozenset(str(g) for g in reply[8] or ())
        try:
            yield self._redis.execute_command(
                "SADD", keys.node_sessions(node), index_entry(user, session, epoch)
            )
        except Exception as e:
            # The claim stands; only a cleanup after this node's death misses it.
            self.log.warn(
                "Session {user}/{session} not indexed for {node}: {error}",
                user=user,
                session=session,
                node=node,
                error=str(e),
            )
        return Claim(
            epoch=str(epoch),
            previous_node=str(prev_node),
            previously_online=str(prev_online) == "1",
            replay_after=str(replay_after),
            pending=int(pending),
            trimmed=bool(int(trimmed)),
            resumed=bool(int(existed)),
            subscriptions=subscriptions,
            presence_groups=presence_groups,
        )

    @inlineCallbacks
    def release(self, user: str, session: str, epoch: str) -> Any:
        """Mark the session offline if ``epoch`` still owns it; fires True if it did.

        The claim's entry leaves this node's session index either way.
        """
        released = self._redis.eval(
            self._release_script,
            [keys.session(user, session), keys.online(user)],
            [session, epoch],
        )
        if self.node_id:
            # A stale entry is harmless (cleanup checks it), so this is not awaited.
            self._redis.execute_command(
                "SREM",
                keys.node_sessions(self.node_id),
                index_entry(user, session, epoch),
            ).addErrback(self._unindex_failed, user, session)
        reply = yield released
        return bool(int(reply))

    def _unindex_failed(self, reason: Any, user: str, session: str) -> None:
        self.log.debug(
            "Session {user}/{session} left in the index of {node}: {error}",
            user=user,
            session=session,
            node=self.node_id,
            error=reason.getErrorMessage(),
        )

    @inlineCallbacks
    def orphan(self, user: str, session: str, node: str, epoch: str) -> Any:
        """Mark the session offline if dead ``node`` still owns it at ``epoch``.

        Fires True if it did; a session claimed again since is left alone.
        """
        reply = yield self._redis.eval(
            self._orphan_script,
            [keys.session(user, session), keys.online(user)],
            [session, node, epoch],
        )
        return bool(int(reply))

    @inlineCallbacks
    def acknowledge(self, user: str, session: str, epoch: str, upto: str) -> Any:
        """Advance the session's ack cursor to ``upto`` and renew the session's
        keys for another ``ttl_seconds``; fires True if the cursor moved."""
        reply = yield self._redis.eval(
            self._ack_script,
            [
                keys.session(user, session),
                keys.sessions(user),
                keys.online(user),
                keys.subscriptions(user, session),
                keys.presence_subscriptions(user, session),
            ],
            [epoch, upto, self.ttl_seconds],
        )
        return bool(int(reply))

    @inlineCallbacks
    def lookup(self, user: str) -> Any:
        """Fire with the user's known sessions as :class:`SessionInfo`, sorted by id."""
        members = yield self._redis.execute_command("SMEMBERS", keys.sessions(user))
        found = []
        for session in sorted(members or ()):
            flat = yield self._redis.execute_command(
                "HGETALL", keys.session(user, session)
            )
            fields = _as_dict(flat)
            if not fields:
                continue
            found.append(
                SessionInfo(
                    session=session,
                    node=fields.get("node", ""),
                    online=fields.get("online") == "1",
                    epoch=fields.get("epoch", "0"),
                    cursor=fields.get("cursor", "0-0"),
                    seen=int(fields.get("seen", 0)),
                )
            )
        return found


def _as_dict(reply: Any) -> dict[str, str]:
    if isinstance(reply, dict):
        return {str(k): str(v) for k, v in reply.items()}
    flat = list(reply or ())
    return {str(k): str(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}
