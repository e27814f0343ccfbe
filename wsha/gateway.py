"""Gateway: the node's routing core, shared by WebSocket and control API.

It stores every message in the recipient's inbox before anything else
(invariant 1), tells the nodes holding the recipient's sessions to pull, and
keeps the table of this node's live sessions.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from wsha import topics, wire
from wsha.client_session import ClientSession
from wsha.delivery import SessionDelivery
from wsha.inbox import AppendResult, InboxStore
from wsha.inflight import InFlight
from wsha.market_session import MarketData
from wsha.metrics import ROUTE_KAFKA, ROUTE_LOCAL, ROUTE_SWEEP
from wsha.output_gate import OutputLimits
from wsha.services.redis_service import RedisUnavailable
from wsha.session_groups import GroupHub
from wsha.sessions import Claim, SessionRegistry

if TYPE_CHECKING:
    from wsha.broadcast.feed import BroadcastFeed

KICKED = "kicked by operator"
"""The close reason of a session an operator kicked (code 1008)."""

NEWER_CLAIM_MEMORY = 30.0
"""Seconds a takeover notice for a session not (yet) live here is remembered."""


class NoticeSender(Protocol):
    """What the gateway needs from the Kafka bus: queue a notice for a node."""

    def send(self, node_id: str, notice: bytes, key: bytes | None = None) -> None:
        """Queue ``notice`` for ``node_id``'s topic."""


class LiveNodes(Protocol):
    """What the gateway needs from the node registry: which nodes are alive."""

    def is_live(self, node_id: str) -> bool:
        """Say whether ``node_id`` may be sent notices (False once known dead)."""


class EveryNodeLive:
    """A :class:`LiveNodes` for a gateway without a node registry."""

    def is_live(self, node_id: str) -> bool:
        """Every node is taken to be alive."""
        return True


class Gateway:
    """Routes messages by user and session, never by address.

    :param node_id: this node's id.
    :param inbox: the users' inboxes.
    :param registry: the session registry (claims and fencing).
    :param bus: sends notices to other nodes.
    :param clock: time source; also batches notices to the next tick.
    :param max_body_bytes: the largest message body accepted.
    :param live_nodes: which nodes are alive; a dead node is sent no notices
        (its sessions' messages wait in the inbox for their reconnect).
    :param groups: the node's group parts; without them group frames are refused.
    """

    log = Logger()

    def __init__(
        self,
        node_id: str,
        inbox: InboxStore,
        registry: SessionRegistry,
        bus: NoticeSender,
        clock: IReactorTime,
        max_body_bytes: int = 64 * 1024,
        live_nodes: LiveNodes | None = None,
        groups: GroupHub | None = None,
    ):
        self.node_id = node_id
        self.groups = groups
        self.live_nodes = live_nodes or EveryNodeLive()
        self.inbox = inbox
        self.registry = registry
        self.bus = bus
        self.clock = clock
        self.max_body_bytes = max_body_bytes
        self.local: dict[str, dict[str, ClientSession]] = defaultdict(dict)
        self._pending_notices: set[tuple[str, str]] = set()
        self._flush_call: IDelayedCall | None = None
        self._newer_claims: dict[tuple[str, str], int] = {}
        # Sessions whose release failed (Redis down): retried when it is back.
        self._unreleased: dict[tuple[str, str], str] = {}
        # The node's system broadcasts, when it serves them (set by the node).
        self.broadcasts: BroadcastFeed | None = None
        # Set by the node: market data (none: instruments are not served), and
        # how far a connection's output may back up before it is closed.
        self.market: MarketData | None = None
        self.output_limits = OutputLimits()
        # Sends and publishes accepted and not yet stored (a drain waits on them).
        self.in_flight = InFlight()

    # Sessions

    @inlineCallbacks
    def claim(self, client: ClientSession) -> Any:
        """Claim ``client``'s session for this node and evict any older owner."""
        claim: Claim = yield self.registry.claim(
            client.user, client.session, self.node_id, client.after
        )
        epoch = client.epoch = int(claim.epoch)
        newest = max(self._newer_claims.pop((client.user, client.session), 0), epoch)
        current = self.local[client.user].get(client.session)
        if current is not None and current is not client and current.epoch is not None:
            newest = max(newest, current.epoch)
            current.take_over(epoch)
        if newest > epoch:
            # A newer claim won while this one was in flight: this one is stale.
            client.take_over(newest)
            return claim
        self.local[client.user][client.session] = client

        previous = claim.previous_node
        if (
            claim.previously_online
            and previous not in ("", self.node_id)
            and self.live_nodes.is_live(previous)
        ):
            self.bus.send(
                claim.previous_node,
                topics.encode_takeover_notice(client.user, client.session, epoch),
                key=client.user.encode(),
            )
        return claim

    def release(self, client: ClientSession) -> Deferred[Any]:
        """Drop ``client`` from the local table; release its claim if still its own."""
        sessions = self.local.get(client.user)
        if sessions is not None and sessions.get(client.session) is client:
            del sessions[client.session]
            if not sessions:
                del self.local[client.user]
        if client.epoch is None:
            d: Deferred[Any] = Deferred()
            d.callback(False)
            return d
        epoch = str(client.epoch)
        d = self.registry.release(client.user, client.session, epoch)
        d.addErrback(self._release_failed, client, epoch)
        return d

    def store_recovered(self) -> None:
        """Redis is back: retry the releases it missed and pull every inbox.

        Releases are fenced by epoch, so one retried late is a no-op when a
        newer connection of the session has claimed it since.
        """
        unreleased, self._unreleased = self._unreleased, {}
        for (user, session), epoch in unreleased.items():
            d = self.registry.release(user, session, epoch)
            d.addErrback(self._retry_failed, user, session, epoch)
        self.poke_all()

    def acknowledge(self, client: ClientSession, upto: str) -> None:
        """Record that ``client`` has received everything up to ``upto``."""
        d = self.registry.acknowledge(
            client.user, client.session, str(client.epoch), upto
        )
        d.addErrback(self._log_failure, "acknowledge", client)

    def new_delivery(self, client: ClientSession, after: str) -> SessionDelivery:
        """Build the inbox pump feeding ``client`` from ``after`` on."""
        return SessionDelivery(
            self.inbox,
            client.user,
            after,
            client.deliver,
            self.clock,
            writable=lambda: client.output.writable,
        )

    def connection_count(self) -> int:
        """How many sessions are live on this node."""
        return sum(len(sessions) for sessions in self.local.values())

    # Messages

    def submit(
        self, sender: str, to: str, client_id: str, body_json: str
    ) -> Deferred[Any]:
        """Store a message in the inbox of ``to``, then notify; fires AppendResult.

        Counted in :attr:`in_flight` until stored (or failed).
        """
        return self.in_flight.track(self._submit(sender, to, client_id, body_json))

    @inlineCallbacks
    def _submit(self, sender: str, to: str, client_id: str, body_json: str) -> Any:
        ts = int(self.clock.seconds() * 1000)
        result: AppendResult = yield self.inbox.append(
            to, sender, client_id, body_json, ts
        )
        for node in result.nodes:
            if self.live_nodes.is_live(node):
                self._queue_notice(node, to)
        return result

    def on_notice(self, raw: bytes) -> None:
        """Act on a notice read from this node's topic."""
        try:
            notice = topics.decode_notice(raw)
        except ValueError as e:
            self.log.warn("Ignoring a malformed notice: {error}", error=str(e))
            return
        if notice["kind"] == topics.INBOX:
            self.poke_user(notice["user"], ROUTE_KAFKA)
            return
        if notice["kind"] == topics.SUBSCRIPTIONS:
            self.reload_subscriptions(notice["user"], notice["session"])
            return
        if notice["kind"] == topics.KICK:
            self.kick_local(notice["user"], notice["session"], notice["epoch"])
            return
        user, session = notice["user"], str(notice.get("session"))
        epoch = int(notice.get("epoch", 0))
        client = self.local.get(user, {}).get(session)
        if client is not None:
            client.take_over(epoch)
        else:
            # Our own claim of it may still be in flight; it checks this on return.
            self._remember_newer_claim(user, session, epoch)

    def notify_subscriptions(self, node: str, user: str, session: str) -> None:
        """Tell ``node``, which holds the session, that its subscriptions changed."""
        if node == self.node_id:
            self.reload_subscriptions(user, session)
        elif self.live_nodes.is_live(node):
            self.bus.send(
                node,
                topics.encode_subscriptions_notice(user, session),
                key=user.encode(),
            )

    def reload_subscriptions(self, user: str, session: str) -> None:
        """Bring a local session's groups in line with its stored subscriptions."""
        client = self.local.get(user, {}).get(session)
        if client is not None and client.groups is not None:
            client.groups.reload()

    def _remember_newer_claim(self, user: str, session: str, epoch: int) -> None:
        key = (user, session)
        self._newer_claims[key] = max(self._newer_claims.get(key, 0), epoch)
        self.clock.callLater(NEWER_CLAIM_MEMORY, self._newer_claims.pop, key, None)

    def kick_local(self, user: str, session: str, epoch: int) -> bool:
        """Close this node's connection of a session an operator kicked (1008).

        A connection newer than ``epoch`` (opened after the operator looked) is
        left open. Returns True if a connection was closed.
        """
        client = self.local.get(user, {}).get(session)
        if client is None or client.epoch is None or client.epoch > epoch:
            return False
        self.log.info(
            "Kicking {user}/{session} (epoch {epoch}) at an operator's request",
            user=user,
            session=session,
            epoch=client.epoch,
        )
        client.link.close(wire.CLOSE_POLICY, KICKED)
        return True

    def close_local_sessions(self, code: int, reason: str) -> None:
        """Close every connection on this node with ``code``; they reconnect."""
        for sessions in list(self.local.values()):
            for client in list(sessions.values()):
                client.link.close(code, reason)

    def poke_all(self) -> None:
        """Make every local session pull its inbox and groups (the safety net)."""
        for user in list(self.local):
            self.poke_user(user, ROUTE_SWEEP)
        if self.groups is not None:
            self.groups.fanout.poke_all()

    def poke_user(self, user: str, route: str | None = None) -> None:
        """Make every local session of ``user`` pull its inbox.

        :param route: what asks for the pull (``kafka``, ``local``, ``sweep``).
        """
        for client in list(self.local.get(user, {}).values()):
            if client.delivery is not None:
                client.delivery.poke(route)

    def _queue_notice(self, node: str, user: str) -> None:
        # Notices for one (node, user) within one reactor turn go out once.
        self._pending_notices.add((node, user))
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._flush_notices)

    def _flush_notices(self) -> None:
        self._flush_call = None
        pending, self._pending_notices = self._pending_notices, set()
        for node, user in pending:
            if node == self.node_id:
                self.poke_user(user, ROUTE_LOCAL)
            else:
                self.bus.send(node, topics.encode_inbox_notice(user), key=user.encode())

    def _release_failed(self, reason: Any, client: ClientSession, epoch: str) -> bool:
        self._retry_failed(reason, client.user, client.session, epoch)
        return self._log_failure(reason, "release", client)

    def _retry_failed(self, reason: Any, user: str, session: str, epoch: str) -> None:
        # Only the newest epoch's release can still do anything.
        known = self._unreleased.get((user, session))
        if known is None or int(epoch) > int(known):
            self._unreleased[(user, session)] = epoch

    def _log_failure(self, reason: Any, step: str, client: ClientSession) -> bool:
        # An outage is logged once by the Redis service, not once per session.
        emit = self.log.debug if reason.check(RedisUnavailable) else self.log.warn
        emit(
            "Session {step} for {user}/{session} failed: {error}",
            step=step,
            user=client.user,
            session=client.session,
            error=reason.getErrorMessage(),
        )
        return False
