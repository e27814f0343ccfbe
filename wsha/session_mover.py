"""SessionMover: sends a share of this node's clients elsewhere, gradually.

Scaling out adds an empty node; the balancer sends it new connections, but the
old nodes keep every connection they have. A move closes a chosen share of
this node's sessions with 1012 ("reconnect now, to any node"), spread evenly
over a window, so they come back through the balancer (which then favours the
emptier nodes) a few at a time instead of in a herd. Clients resume by id, so
nothing is lost.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from wsha import wire

if TYPE_CHECKING:
    from wsha.client_session import ClientSession
    from wsha.gateway import Gateway

MOVED = "moved by operator: reconnect to any node"
"""The close reason of a moved session (code 1012)."""


@dataclass(frozen=True)
class Move:
    """What a move request set going.

    :param sessions: the sessions live on this node when it was asked.
    :param moving: how many of them it will close.
    :param over: the seconds the closes are spread over.
    :param cancelled: closes still pending from an earlier move, now dropped.
    """

    sessions: int
    moving: int
    over: float
    cancelled: int


def share_of(count: int, share: float) -> int:
    """How many of ``count`` sessions ``share`` (0-1) is: rounded, at least one
    when the share and the count are above zero."""
    if share <= 0 or count == 0:
        return 0
    return min(count, max(1, round(count * share)))


class SessionMover:
    """Closes a share of the gateway's local sessions with 1012, spread over time.

    :param gateway: the node's gateway (its table of local sessions).
    :param clock: schedules the closes.
    :param rng: picks the sessions (random, so no user is always the one moved).
    """

    log = Logger()

    def __init__(
        self, gateway: Gateway, clock: IReactorTime, rng: random.Random | None = None
    ):
        self._gateway = gateway
        self._clock = clock
        self._rng = rng or random.Random()
        self._pending: list[IDelayedCall] = []
        self._closed = 0

    @property
    def pending(self) -> int:
        """Closes still to come."""
        return sum(1 for call in self._pending if call.active())

    def move(self, share: float, over: float) -> Move:
        """Close ``share`` (0-1) of the local sessions, evenly over ``over`` seconds.

        A move replaces any move still in progress (its remaining closes are
        dropped), so ``share`` 0 stops one.
        """
        cancelled = self.cancel()
        live = [
            client
            for sessions in self._gateway.local.values()
            for client in sessions.values()
        ]
        chosen = self._rng.sample(live, share_of(len(live), share))
        step = over / len(chosen) if chosen else 0.0
        self._closed = 0
        self._pending = [
            self._clock.callLater(i * step, self._close, client, len(chosen))
            for i, client in enumerate(chosen)
        ]
        self.log.info(
            "Moving {moving} of {sessions} sessions off {node} over {over}s "
            "({cancelled} pending closes of an earlier move dropped)",
            moving=len(chosen),
            sessions=len(live),
            node=self._gateway.node_id,
            over=over,
            cancelled=cancelled,
        )
        return Move(len(live), len(chosen), over, cancelled)

    def cancel(self) -> int:
        """Drop the closes still pending; returns how many there were."""
        pending, self._pending = self._pending, []
        dropped = 0
        for call in pending:
            if call.active():
                call.cancel()
                dropped += 1
        return dropped

    def _close(self, client: ClientSession, total: int) -> None:
        # A session that closed or reconnected meanwhile is not this one any more.
        current = self._gateway.local.get(client.user, {}).get(client.session)
        if current is client:
            client.link.close(wire.CLOSE_RESTARTING, MOVED)
            self._closed += 1
        if self.pending == 0:
            self._pending = []
            self.log.info(
                "Move off {node} done: {closed} of {total} sessions closed (the "
                "others had gone already)",
                node=self._gateway.node_id,
                closed=self._closed,
                total=total,
            )
