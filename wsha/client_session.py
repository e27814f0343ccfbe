"""ClientSession: one authenticated connection bound to a claimed session.

It holds the frame-level behaviour of the contract in docs/protocol.md and
talks to its WebSocket only through a :class:`Link`, so it is tested without
sockets.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger

from wsha import connection_events, metrics, wire
from wsha.broadcast.session import SessionBroadcasts
from wsha.delivery import SessionDelivery
from wsha.delivery_latency import DeliveryLedger
from wsha.groups import NotAMember
from wsha.inbox import InboxEntry
from wsha.output_gate import OutputGate
from wsha.services.redis_service import RedisUnavailable
from wsha.session_groups import SessionGroups
from wsha.sessions import Claim, SessionLimitReached

if TYPE_CHECKING:
    from wsha.gateway import Gateway

MAX_EARLY_FRAMES = 256
# Sends waiting for the one being stored; past this the link closes with 1013.
MAX_QUEUED_SENDS = 1000
"""Frames a client may send before its session is claimed; more is a policy close."""


class Link(Protocol):
    """What a ClientSession needs from its WebSocket connection."""

    def send_frame(self, payload: bytes) -> None:
        """Send one text frame."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection with a WebSocket close code."""

    def register_producer(self, producer: IPushProducer) -> None:
        """Have the transport pause ``producer`` while its write buffer is full."""


class ClientSession:
    """The server side of one client connection after authentication.

    :param gateway: the node's gateway, for claims, sends and presence.
    :param link: the WebSocket connection.
    :param user: the authenticated user id.
    :param session: the client-chosen session (device) id.
    :param after: the last inbox id the client says it saw, if any.
    :param tags: the tags the client's token carries (broadcast audiences).
    :param broadcast_after: the last broadcast id the client says it saw, if any.
    """

    log = Logger()

    def __init__(
        self,
        gateway: Gateway,
        link: Link,
        user: str,
        session: str,
        after: str | None,
        tags: frozenset[str] = frozenset(),
        broadcast_after: str | None = None,
        group_after: dict[str, str] | None = None,
    ):
        self.gateway = gateway
        # The last group message ids the client says it saw, per group.
        self.group_after = group_after or {}
        # Every frame goes through the gate, which holds back what can wait and
        # closes with 4008 a client that stays behind (wsha/output_gate.py).
        self.output = OutputGate(
            link, gateway.clock, gateway.output_limits, f"{user}/{session}"
        )
        self.output.on_resume(self._output_resumed)
        self.link = self.output
        self.market = (
            gateway.market.subscriptions(self.output, self._reply)
            if gateway.market is not None
            else None
        )
        self.user = user
        self.session = session
        self.after = after
        self.epoch: int | None = None
        self.claim: Claim | None = None
        self.delivery: SessionDelivery | None = None
        self.tags = tags
        self.broadcast_after = broadcast_after
        self.broadcasts: SessionBroadcasts | None = None
        self.closed = False
        self.closing = False
        self._early_frames: list[str] = []
        # The client id of the first send that failed, which must come again
        # before any later send of this connection is stored.
        self._resend_first: str | None = None
        self._queued_sends: deque[wire.Send | wire.Publish] = deque()
        self._storing = False
        hub = gateway.groups
        self.groups = SessionGroups(self, hub) if hub is not None else None
        # Times each message written here up to the client's ack (metrics).
        self.ledger = DeliveryLedger(gateway.clock)

    @inlineCallbacks
    def start(self) -> Any:
        """Claim the session, greet the client, then replay and go live.

        If the connection closed while the claim was in flight, the claim is
        released here, so no ghost session stays online.
        """
        self.output.start()
        try:
            claim = yield self.gateway.claim(self)
        except SessionLimitReached as e:
            self.log.info(
                "Refused {user}/{session}: {error}",
                user=self.user,
                session=self.session,
                error=str(e),
            )
            self.link.close(wire.CLOSE_TOO_MANY_SESSIONS, "too many sessions online")
            return
        except Exception as e:
            # An outage is logged once by the Redis service; anything else here.
            emit = self.log.debug if isinstance(e, RedisUnavailable) else self.log.warn
            emit(
                "Claim of {user}/{session} failed: {error}",
                user=self.user,
                session=self.session,
                error=str(e),
            )
            self.link.close(wire.CLOSE_TRY_LATER, "session store unavailable")
            return
        if self.closed:
            yield self.gateway.release(self)
            return
        if self.closing:
            return

        restored: dict[str, Any] = {}
        if self.groups is not None:
            try:
                restored = yield self.groups.restore(claim)
            except Exception as e:
                self.log.warn(
                    "Subscriptions of {user}/{session} not restored: {error}",
                    user=self.user,
                    session=self.session,
                    error=str(e),
                )
                self.link.close(wire.CLOSE_TRY_LATER, "subscriptions not restored")
                return
            if self.closed or self.closing:
                # Its presence was joined meanwhile: leave it again (fenced).
                self.groups.close()
                return

        self.claim = claim
        if self.gateway.broadcasts is not None:
            opened = yield self._open_broadcasts()
            if not opened:
                if self.groups is not None:
                    self.groups.close()
                return

        self.link.send_frame(
            wire.encode(
                {
                    "type": "welcome",
                    "node": self.gateway.node_id,
                    "user": self.user,
                    "session": self.session,
                    "epoch": self.epoch,
                    "resumed": claim.resumed,
                    "after": claim.replay_after,
                    "replayed": claim.pending,
                    "truncated": claim.trimmed,
                    "groups": restored,
                    **self._broadcast_welcome(),
                }
            )
        )
        connection_events.session_opened(self, claim, restored)

        self.delivery = self.gateway.new_delivery(self, claim.replay_after)
        self.delivery.poke()
        if self.groups is not None:
            self.groups.go_live()
        if self.broadcasts is not None:
            self.broadcasts.ledger = self.ledger
            self.broadcasts.start()

        early, self._early_frames = self._early_frames, []
        for text in early:
            self.on_text(text)

    @inlineCallbacks
    def _open_broadcasts(self) -> Any:
        # Where this session's broadcasts resume; fires False if the
        # connection was closed meanwhile or must close.
        assert self.gateway.broadcasts is not None
        try:
            self.broadcasts = yield self.gateway.broadcasts.open(
                self.user,
                self.session,
                str(self.epoch),
                self.tags,
                self.broadcast_after,
                self._send_broadcast,
            )
        except Exception as e:
            emit = self.log.debug if isinstance(e, RedisUnavailable) else self.log.warn
            emit(
                "Broadcast cursor of {user}/{session} not read: {error}",
                user=self.user,
                session=self.session,
                error=str(e),
            )
            self.link.close(wire.CLOSE_TRY_LATER, "session store unavailable")
            return False
        return not (self.closed or self.closing)

    def _broadcast_welcome(self) -> dict[str, Any]:
        if self.broadcasts is None:
            return {}
        return self.broadcasts.welcome_fields()

    def _send_broadcast(self, frame: bytes) -> None:
        if not self.closed:
            self.link.send_frame(frame)

    def on_text(self, text: str) -> None:
        """Handle one text frame from the client."""
        if self.closed:
            return
        if self.epoch is None:
            if len(self._early_frames) >= MAX_EARLY_FRAMES:
                self.link.close(wire.CLOSE_POLICY, "too many frames before welcome")
                return
            self._early_frames.append(text)
            return
        try:
            frame = wire.parse_client_frame(text, self.gateway.max_body_bytes)
        except wire.FrameError as e:
            self._reply(wire.error_frame(e.code, e.message, e.frame_id))
            return
        if isinstance(frame, wire.Send | wire.Publish):
            self._send(frame)
        elif isinstance(frame, wire.Ack):
            self._on_ack(frame)
        elif isinstance(frame, wire.Ping):
            pong: dict[str, Any] = {"type": "pong"}
            if frame.id is not None:
                pong["id"] = frame.id
            self._reply(pong)
        else:
            self._on_subscription_frame(frame)

    def _on_ack(self, frame: wire.Ack) -> None:
        if frame.group is not None or frame.broadcast:
            self._on_subscription_frame(frame)
        else:
            self._acknowledge(frame.upto)

    def _on_subscription_frame(self, frame: wire.ClientFrame) -> None:
        if (
            isinstance(frame, wire.Subscribe | wire.Unsubscribe)
            and frame.instrument is not None
            and self.market is not None
        ):
            self.market.on_frame(frame)
            return
        # Groups, market data and broadcasts are served by their own parts.
        if isinstance(frame, wire.Ack) and frame.broadcast:
            if self.broadcasts is None:
                self._reply(wire.error_frame("unknown_type", "no broadcasts here"))
                return
            error = self.broadcasts.acknowledge(frame.upto)
            if error is not None:
                self._reply(error)
            else:
                self.ledger.acknowledged(metrics.BROADCAST, "", frame.upto)
            return
        groups = self.groups
        frame_id = getattr(frame, "id", None)
        if groups is None or getattr(frame, "instrument", None) is not None:
            kind = type(frame).__name__.lower()
            self._reply(
                wire.error_frame("unknown_type", f"no {kind} on this node", frame_id)
            )
        elif isinstance(frame, wire.Subscribe):
            groups.subscribe(frame)
        elif isinstance(frame, wire.Unsubscribe):
            groups.unsubscribe(frame)
        elif isinstance(frame, wire.PresenceQuery):
            groups.presence(frame)
        elif isinstance(frame, wire.Ack) and frame.group is not None:
            groups.acknowledge(frame.group, frame.upto)
        else:
            self._reply(wire.error_frame("unknown_type", "not served", frame_id))

    def _acknowledge(self, upto: str) -> None:
        # The stored cursor is what a device that lost its own resumes from:
        # one past what was delivered would silently skip messages.
        sent = self.delivery.last_sent if self.delivery is not None else "0-0"
        if wire.stream_id_key(upto) > wire.stream_id_key(sent):
            self._reply(
                wire.error_frame("bad_frame", "ack beyond the last message delivered")
            )
            return
        self.ledger.acknowledged(metrics.DIRECT, "", upto)
        self.gateway.acknowledge(self, upto)

    def on_binary(self) -> None:
        """Answer a binary frame, which the contract does not use."""
        self._reply(
            wire.error_frame("binary_not_supported", "frames must be JSON text")
        )

    def send_frame(self, frame: dict[str, Any]) -> None:
        """Send a server frame to the client, unless the connection is gone."""
        self._reply(frame)

    def send_bytes(self, payload: bytes) -> None:
        """Send an already encoded frame, unless the connection is gone."""
        if not self.closed:
            self.link.send_frame(payload)

    def deliver(self, entries: list[InboxEntry]) -> int:
        """Write inbox entries as ``message`` frames; return how many were written.

        Writing stops once the connection backs up; the inbox keeps the rest.
        """
        written = 0
        route = self.delivery.route if self.delivery is not None else ""
        for entry in entries:
            if self.closed or not self.output.writable:
                break
            self.link.send_frame(
                wire.encode_message(entry.id, entry.sender, entry.body_json, entry.ts)
            )
            self.ledger.written(metrics.DIRECT, "", entry.id, entry.ts, route)
            written += 1
        return written

    def _output_resumed(self) -> None:
        if self.delivery is not None and self.delivery.held:
            self.delivery.poke()
        if self.groups is not None:
            self.groups.resume_held()

    def take_over(self, epoch: int) -> None:
        """Close this connection if a claim with a newer ``epoch`` replaced it."""
        if self.epoch is not None and self.epoch < epoch and not self.closed:
            self.closing = True
            connection_events.taken_over(self, epoch)
            self.link.close(wire.CLOSE_TAKEN_OVER, "session taken over")

    def connection_lost(self) -> None:
        """Forget the connection and release the session if this one still owns it."""
        if self.closed:
            return
        self.closed = True
        self.output.stop()
        self.ledger.close()
        if self.market is not None:
            self.market.close()
        if self.delivery is not None:
            self.delivery.stop()
        if self.broadcasts is not None:
            self.broadcasts.stop()
        if self.epoch is not None:
            if self.groups is not None:
                self.groups.close()
            self.gateway.release(self)

    def _send(self, frame: wire.Send | wire.Publish) -> None:
        # Sends of one connection are stored one after another, in the order
        # they came: a later one could otherwise succeed while an earlier one
        # fails and is retried after it.
        if len(self._queued_sends) >= MAX_QUEUED_SENDS:
            # Refusing this one alone would let it be overtaken by those queued
            # ahead of it being refused later; closing keeps the order: the
            # client resends everything unacknowledged, oldest first.
            self.link.close(wire.CLOSE_TRY_LATER, "too many sends in flight")
            return
        self._queued_sends.append(frame)
        if not self._storing:
            self._store_queued()

    def _store_queued(self) -> None:
        # A loop, not recursion: many sends may complete at once (refused).
        while self._queued_sends and not self.closed:
            d = self._store(self._queued_sends.popleft())
            if not d.called:
                self._storing = True
                d.addBoth(self._stored_one)
                return

    def _stored_one(self, _: Any) -> None:
        self._storing = False
        self._store_queued()

    def _store(self, frame: wire.Send | wire.Publish) -> Deferred[None]:
        # After a send failed (retryably), later ones are refused until it is
        # sent again, so a client that resends in order keeps its order.
        if self._resend_first is not None:
            if frame.id != self._resend_first:
                self._reply(
                    wire.error_frame(
                        "resend_earlier",
                        f"send {self._resend_first} failed; send it again first",
                        frame.id,
                    )
                )
                return succeed(None)
            self._resend_first = None
        answer: dict[str, Any] = {"type": "ack", "id": frame.id}
        if isinstance(frame, wire.Publish):
            if self.groups is None:
                self._reply(wire.error_frame("unknown_type", "no groups", frame.id))
                return succeed(None)
            d = self.gateway.in_flight.track(self.groups.publish(frame))
            answer["group"] = frame.group
            stored_in = "history"
        else:
            d = self.gateway.submit(
                self.user, frame.to, frame.id, wire.encode_body(frame.body)
            )
            stored_in = "inbox"

        def stored(result: Any) -> None:
            kind = metrics.DIRECT if stored_in == "inbox" else metrics.GROUP
            metrics.stored(kind, metrics.FROM_WEBSOCKET, result.duplicate)
            answer[stored_in] = result.id
            answer["duplicate"] = result.duplicate
            self._reply(answer)

        def failed(reason: Any) -> None:
            if reason.check(NotAMember):
                # Refused for good: later publishes are not held up by it.
                self._reply(
                    wire.error_frame(
                        "not_subscribed", reason.getErrorMessage(), frame.id
                    )
                )
                return
            if self._resend_first is None:
                self._resend_first = frame.id
            if reason.check(RedisUnavailable):
                self.log.debug(
                    "Send {id} from {user} not stored: {error}",
                    id=frame.id,
                    user=self.user,
                    error=reason.getErrorMessage(),
                )
                self._reply(
                    wire.error_frame(
                        "unavailable", "message store unreachable", frame.id
                    )
                )
                return
            self.log.failure(
                "Send {id} from {user} not stored", reason, id=frame.id, user=self.user
            )
            self._reply(wire.error_frame("internal", "message not stored", frame.id))

        return d.addCallbacks(stored, failed)

    def _reply(self, frame: dict[str, Any]) -> None:
        if not self.closed:
            self.link.send_frame(wire.encode(frame))
