"""Times and classifies the commands of the node's Redis connection.

Each command is timed from sending to its reply, error or timeout
(``wsha_redis_command_seconds``) and each failure counted by kind
(``wsha_redis_errors_total``). Commands are named by their Redis command, or
``<script>.lua`` for wsha's own scripts: a fixed, small set of label values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import txredisapi
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from wsha import metrics
from wsha.lua import name_of

UNAVAILABLE = "unavailable"
TIMEOUT = "timeout"
CONNECTION = "connection"
REPLY = "reply"
OTHER = "other"


def command_name(args: Sequence[Any]) -> str:
    """The label of ``execute_command(*args)``: the command, upper case."""
    if not args:
        return "none"
    first = args[0]
    if isinstance(first, bytes):
        first = first.decode("ascii", "replace")
    return str(first).upper()[:32]


def script_name(script: str) -> str:
    """The label of ``eval(script)``: the script's file name."""
    return f"{name_of(script)}.lua"


def error_kind(reason: Failure, unavailable_replies: tuple[str, ...]) -> str | None:
    """What kind of failure ``reason`` is; None for a cancellation (not an error)."""
    error = reason.value
    if isinstance(error, CancelledError):
        return None
    if isinstance(error, TimeoutError):
        return TIMEOUT
    if isinstance(error, txredisapi.ConnectionError):
        return CONNECTION
    if isinstance(error, txredisapi.ResponseError) and str(error).startswith(
        unavailable_replies
    ):
        return REPLY
    return OTHER


def refused(name: str) -> None:
    """Count a command failed at once because Redis is known to be down."""
    metrics.REDIS_ERRORS.labels(name, UNAVAILABLE).inc()


def measure(
    d: Deferred[Any],
    name: str,
    clock: IReactorTime,
    unavailable_replies: tuple[str, ...],
) -> Deferred[Any]:
    """Time ``d`` (a command just sent) and count its failure, if it fails."""
    started = clock.seconds()

    def done(result: Any) -> Any:
        metrics.REDIS_COMMANDS.labels(name).observe(clock.seconds() - started)
        if isinstance(result, Failure):
            kind = error_kind(result, unavailable_replies)
            if kind is not None:
                metrics.REDIS_ERRORS.labels(name, kind).inc()
        return result

    return d.addBoth(done)
