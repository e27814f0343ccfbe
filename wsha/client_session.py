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

from wsha import wire
from wsha.delivery import SessionDelivery
from wsha.inbox import InboxEntry
from wsha.output_gate import OutputGate
from wsha.services.redis_service import RedisUnavailable
from wsha.sessions import Claim

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
    """

    log = Logger()

    def __init__(
        self, gateway: Gateway, link: Link, user: str, session: str, after: str | None
    ):
        self.gateway = gateway
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
        self.closed = False
        self.closing = False
        self._early_frames: list[str] = []
        # The client id of the first send that failed, which must come again
        # before any later send of this connection is stored.
        self._resend_first: str | None = None
        self._queued_sends: deque[wire.Send] = deque()
        self._storing = False

    @inlineCallbacks
    def start(self) -> Any:
        """Claim the session, greet the client, then replay and go live.

        If the connection closed while the claim was in flight, the claim is
        released here, so no ghost session stays online.
        """
        self.output.start()
        try:
            claim = yield self.gateway.claim(self)
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

        self.claim = claim
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
                }
            )
        )

        self.delivery = self.gateway.new_delivery(self, claim.replay_after)
        self.delivery.poke()

        early, self._early_frames = self._early_frames, []
        for text in early:
            self.on_text(text)

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
        if isinstance(frame, wire.Send):
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
        self._reply(
            wire.error_frame(
                "unknown_type", f"{type(frame).__name__} is not served yet"
            )
        )

    def _acknowledge(self, upto: str) -> None:
        # The stored cursor is what a device that lost its own resumes from:
        # one past what was delivered would silently skip messages.
        sent = self.delivery.last_sent if self.delivery is not None else "0-0"
        if wire.stream_id_key(upto) > wire.stream_id_key(sent):
            self._reply(
                wire.error_frame("bad_frame", "ack beyond the last message delivered")
            )
            return
        self.gateway.acknowledge(self, upto)

    def on_binary(self) -> None:
        """Answer a binary frame, which the contract does not use."""
        self._reply(
            wire.error_frame("binary_not_supported", "frames must be JSON text")
        )

    def deliver(self, entries: list[InboxEntry]) -> int:
        """Write inbox entries as ``message`` frames; return how many were written.

        Writing stops once the connection backs up; the inbox keeps the rest.
        """
        written = 0
        for entry in entries:
            if self.closed or not self.output.writable:
                break
            self.link.send_frame(
                wire.encode_message(entry.id, entry.sender, entry.body_json, entry.ts)
            )
            written += 1
        return written

    def _output_resumed(self) -> None:
        if self.delivery is not None and self.delivery.held:
            self.delivery.poke()

    def take_over(self, epoch: int) -> None:
        """Close this connection if a claim with a newer ``epoch`` replaced it."""
        if self.epoch is not None and self.epoch < epoch and not self.closed:
            self.closing = True
            self.log.info(
                "Session {user}/{session} taken over (epoch {old} < {new})",
                user=self.user,
                session=self.session,
                old=self.epoch,
                new=epoch,
            )
            self.link.close(wire.CLOSE_TAKEN_OVER, "session taken over")

    def connection_lost(self) -> None:
        """Forget the connection and release the session if this one still owns it."""
        if self.closed:
            return
        self.closed = True
        self.output.stop()
        if self.market is not None:
            self.market.close()
        if self.delivery is not None:
            self.delivery.stop()
        if self.epoch is not None:
            self.gateway.release(self)

    def _send(self, frame: wire.Send) -> None:
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

    def _store(self, frame: wire.Send) -> Deferred[None]:
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
        d = self.gateway.submit(
            self.user, frame.to, frame.id, wire.encode_body(frame.body)
        )

        def stored(result: Any) -> None:
            self._reply(
                {
                    "type": "ack",
                    "id": frame.id,
                    "inbox": result.id,
                    "duplicate": result.duplicate,
                }
            )

        def failed(reason: Any) -> None:
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
