"""The node's log output: twistd's text lines, or one JSON object per line.

With ``--log-format json`` every log event becomes one line of JSON that keeps
its structured fields::

    {"time": "2025-01-02T03:04:05.678Z", "level": "info",
     "namespace": "wsha.connections", "message": "Session alice/phone opened...",
     "connection": "open", "user": "alice", "session": "phone", "node": "n1", ...}

The observer is installed the way twistd expects: as the application's
``ILogObserver`` component, which twistd prefers to its own text observer.
It writes where twistd would have: ``--logfile`` (rotated like twistd's), or
standard output with ``--nodaemon`` and no log file (and always from a
``.tac`` file, whose twistd options the node cannot see).
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, LogEvent, formatEvent
from twisted.python.components import Componentized
from twisted.python.logfile import LogFile

TEXT = "text"
JSON = "json"
FORMATS = (TEXT, JSON)
"""The values of ``--log-format``."""

STDOUT = "-"
"""The log destination that means standard output."""

RESERVED = frozenset({"time", "level", "namespace", "message", "system", "failure"})
"""Keys of each line that an event's own fields never overwrite."""

LEGACY_KEYS = frozenset({"message", "isError", "why", "format", "printed"})
"""Fields of events from twisted.python.log that the line already renders."""


def _value(value: Any) -> Any:
    # Plain JSON values stay as they are; anything else becomes its text.
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _value(v) for k, v in value.items()}
    return str(value)


def _utc(when: Any) -> str | None:
    if not isinstance(when, int | float):
        return None
    moment = datetime.fromtimestamp(when, UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="milliseconds") + "Z"


def json_line(event: LogEvent) -> str | None:
    """One log event as one line of JSON (with its newline).

    The line has ``time`` (UTC, ISO 8601), ``level``, ``namespace``,
    ``message`` (the event's text), ``system`` and ``failure`` (the traceback)
    when there is one, then every field of the event that does not start with
    ``log_``.
    """
    record: dict[str, Any] = {
        "time": _utc(event.get("log_time")),
        "level": getattr(event.get("log_level"), "name", None),
        "namespace": event.get("log_namespace"),
        "message": formatEvent(event),
    }
    system = event.get("log_system")
    if system not in (None, "-"):
        record["system"] = str(system)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["failure"] = failure.getTraceback()
        except Exception:
            record["failure"] = str(failure)
    legacy = event.get("log_namespace") == "log_legacy" or "log_legacy" in event
    for key, value in event.items():
        if key.startswith("log_") or key in RESERVED:
            continue
        if legacy and (key in LEGACY_KEYS or key == "time"):
            continue
        record[key] = _value(value)
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


def json_observer(destination: str) -> ILogObserver:
    """An observer writing JSON lines to ``destination`` (a path, or ``-``)."""
    out: IO[Any]
    if destination == STDOUT:
        out = sys.stdout
    else:
        logfile = LogFile.fromFullPath(destination)
        _rotate_on_sigusr1(logfile)
        out = logfile
    return FileLogObserver(out, json_line)


def _rotate_on_sigusr1(logfile: LogFile) -> None:
    # What twistd does for its own log file, unless a handler is set already.
    if signal.getsignal(signal.SIGUSR1):
        return

    def rotate(signum: int, frame: Any) -> None:
        from twisted.internet import reactor

        reactor.callFromThread(logfile.rotate)  # type: ignore[attr-defined]

    signal.signal(signal.SIGUSR1, rotate)


def twistd_destination(twistd_options: Mapping[str, Any] | None) -> str:
    """Where twistd would send its log, from its own parsed options.

    Standard output for ``--logfile=-``, or ``--nodaemon`` without a log
    file; otherwise the file (``twistd.log`` when none is named).
    """
    if twistd_options is None:
        return STDOUT
    logfile = twistd_options.get("logfile")
    if logfile == STDOUT or (twistd_options.get("nodaemon") and not logfile):
        return STDOUT
    return str(logfile or "twistd.log")


def install(parent: Any, observer: ILogObserver | None) -> None:
    """Make ``observer`` the log observer of ``parent`` if it is an application.

    twistd reads the application's ``ILogObserver`` component when it starts
    logging, after the service tree is built; any other parent is left alone.
    """
    if observer is not None and isinstance(parent, Componentized):
        parent.setComponent(ILogObserver, observer)
