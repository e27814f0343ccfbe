"""What one connection's life looks like to an operator: log lines and metrics.

Each session logs one line when it opens (after its ``welcome``), one when a
newer connection takes it over and one when it closes, with the fields
``connection`` (``open``, ``takeover``, ``close``), ``user``, ``session``,
``node`` and ``epoch``, plus the close code, reason and who closed. The lines
are events of the ``wsha.connections`` namespace, so they can be filtered
from the rest. Nothing here is logged per message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from wsha import metrics

if TYPE_CHECKING:
    from wsha.client_session import ClientSession
    from wsha.sessions import Claim

log = Logger(namespace="wsha.connections")

ABNORMAL_CLOSE = 1006
"""The code reported when a connection ended without a close frame."""


class ClosedSocket(Protocol):
    """What :func:`closed` reads of an Autobahn protocol whose connection ended."""

    opened_at: float | None
    client: ClientSession | None
    # Autobahn's own state, typed loosely there: booleans, the close codes
    # (int or None), the reasons (bytes sent, str received) or None.
    closedByMe: Any
    droppedByMe: Any
    localCloseCode: Any
    localCloseReason: Any
    remoteCloseCode: Any
    remoteCloseReason: Any
    wasNotCleanReason: Any
    peer: Any


def _outcome(resumed: bool, truncated: bool) -> str:
    if truncated:
        return "truncated"
    return "honoured" if resumed else "fresh"


def opened(clock: IReactorTime) -> float:
    """A WebSocket handshake completed; return when (for :func:`closed`)."""
    metrics.CONNECTIONS.inc()
    metrics.CONNECTIONS_OPENED.inc()
    return clock.seconds()


def refused(code: int) -> None:
    """A connection was closed with ``code`` as soon as it opened."""
    metrics.CONNECTIONS_REFUSED.labels(metrics.close_code(code)).inc()


def session_opened(
    client: ClientSession, claim: Claim, restored: dict[str, Any]
) -> None:
    """``client`` got its ``welcome``: log it, and count what it resumed.

    :param claim: the session's claim (its inbox resume point and backlog).
    :param restored: welcome's ``groups``: each restored group's position.
    """
    metrics.RESUMES.labels(metrics.DIRECT, _outcome(claim.resumed, claim.trimmed)).inc()
    metrics.REPLAYED.inc(claim.pending)
    for group in restored.values():
        metrics.RESUMES.labels(
            metrics.GROUP, _outcome(True, bool(group.get("truncated")))
        ).inc()
    broadcasts = client.broadcasts
    if broadcasts is not None:
        metrics.RESUMES.labels(
            metrics.BROADCAST,
            _outcome(claim.resumed, broadcasts.truncated),
        ).inc()
    log.info(
        "Session {user}/{session} opened on {node} (epoch {epoch}, "
        "resumed {resumed}, {replayed} to replay, truncated {truncated})",
        connection="open",
        user=client.user,
        session=client.session,
        node=client.gateway.node_id,
        epoch=client.epoch,
        resumed=claim.resumed,
        after=claim.replay_after,
        replayed=claim.pending,
        truncated=claim.trimmed,
        groups=len(restored),
    )


def taken_over(client: ClientSession, epoch: int) -> None:
    """``client`` is being closed because claim ``epoch`` replaced it."""
    metrics.TAKEOVERS.inc()
    log.info(
        "Session {user}/{session} on {node} taken over (epoch {epoch} < {new_epoch})",
        connection="takeover",
        user=client.user,
        session=client.session,
        node=client.gateway.node_id,
        epoch=client.epoch,
        new_epoch=epoch,
        reason="a newer connection of the session claimed it",
    )


def _how_closed(socket: ClosedSocket) -> tuple[int, str, str]:
    # (code, reason, by): who sent the first close frame, or who dropped it.
    if socket.closedByMe and socket.localCloseCode is not None:
        reason = bytes(socket.localCloseReason or b"").decode("utf-8", "replace")
        return int(socket.localCloseCode), reason, "server"
    if socket.remoteCloseCode is not None:
        return (
            int(socket.remoteCloseCode),
            str(socket.remoteCloseReason or ""),
            "client",
        )
    by = "server" if socket.droppedByMe else "network"
    return ABNORMAL_CLOSE, str(socket.wasNotCleanReason or "connection lost"), by


def closed(socket: ClosedSocket, clock: IReactorTime) -> None:
    """A connection ended: count it, and log it if it had a session.

    Connections refused before they were authenticated were logged when
    refused; those whose session never opened (a failed claim) are logged
    at debug level only, so an outage's reconnect storm stays quiet.
    """
    if socket.opened_at is None:
        return
    metrics.CONNECTIONS.dec()
    code, reason, by = _how_closed(socket)
    metrics.CONNECTIONS_CLOSED.labels(metrics.close_code(code), by).inc()
    client = socket.client
    if client is None:
        return
    emit = log.info if client.claim is not None else log.debug
    emit(
        "Session {user}/{session} closed on {node} by {by}: {code} {reason}",
        connection="close",
        user=client.user,
        session=client.session,
        node=client.gateway.node_id,
        epoch=client.epoch,
        code=code,
        reason=reason,
        by=by,
        peer=socket.peer,
        seconds=round(clock.seconds() - socket.opened_at, 3),
    )
