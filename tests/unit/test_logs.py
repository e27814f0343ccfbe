"""Unit tests for :mod:`wsha.logs`: JSON lines and where twistd sends them."""

from __future__ import annotations

import json
import signal
from io import StringIO
from pathlib import Path
from typing import Any, ClassVar

import pytest
from twisted.application import service
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    globalLogPublisher,
)
from twisted.python import usage
from twisted.python.failure import Failure

from wsha import logs
from wsha.tap import Options


def emitted(**fields: object) -> dict[str, object]:
    """The JSON line of one info event logged with ``fields``."""
    out = StringIO()
    observer = FileLogObserver(out, logs.json_line)
    Logger(namespace="wsha.test", observer=observer).info(
        "Session {user}/{session} closed: {code}", **fields
    )
    line = out.getvalue()
    assert line.endswith("\n") and line.count("\n") == 1
    parsed = json.loads(line)
    assert isinstance(parsed, dict)
    return parsed


def test_event_becomes_one_line_with_its_fields() -> None:
    """An event's text, level, namespace, time and own fields are one JSON line."""
    line = emitted(user="alice", session="phone", code=4001)
    assert line["message"] == "Session alice/phone closed: 4001"
    assert (line["level"], line["namespace"]) == ("info", "wsha.test")
    assert (line["user"], line["session"], line["code"]) == ("alice", "phone", 4001)
    assert isinstance(line["time"], str) and line["time"].endswith("Z")
    assert not [key for key in line if key.startswith("log_")]


def test_odd_values_become_text_and_reserved_keys_stay() -> None:
    """Values JSON cannot hold are written as text; a field named like a
    reserved key does not overwrite it."""
    line = emitted(user=object(), session=("a", 1), code=None, namespace="mine")
    assert isinstance(line["user"], str)
    assert line["session"] == ["a", 1]
    assert line["namespace"] == "wsha.test"


def test_failure_carries_its_traceback() -> None:
    """``log.failure`` events carry the traceback in ``failure``."""
    out = StringIO()
    log = Logger(namespace="wsha.test", observer=FileLogObserver(out, logs.json_line))
    try:
        raise ZeroDivisionError("no sweep today")
    except ZeroDivisionError:
        log.failure("Sweep failed", Failure())
    line = json.loads(out.getvalue())
    assert line["level"] == "critical" and "ZeroDivisionError" in line["failure"]


def test_legacy_events_are_lines_too() -> None:
    """Events from twisted.python.log become lines without their legacy keys."""
    out = StringIO()
    observer = FileLogObserver(out, logs.json_line)
    globalLogPublisher.addObserver(observer)
    try:
        from twisted.python import log as legacy

        legacy.msg("Site starting on 8081", system="web")
    finally:
        globalLogPublisher.removeObserver(observer)
    line = json.loads(out.getvalue().splitlines()[-1])
    assert line["message"] == "Site starting on 8081"
    assert line["system"] == "web" and "isError" not in line
    assert line["level"] == LogLevel.info.name


@pytest.mark.parametrize(
    ("twistd", "destination"),
    [
        (None, "-"),
        ({"logfile": "-", "nodaemon": True}, "-"),
        ({"logfile": None, "nodaemon": True}, "-"),
        ({"logfile": None, "nodaemon": False}, "twistd.log"),
        ({"logfile": "/var/log/n1.log", "nodaemon": True}, "/var/log/n1.log"),
    ],
)
def test_destination_is_where_twistd_would_log(
    twistd: dict[str, object] | None, destination: str
) -> None:
    """JSON lines go to twistd's --logfile, or stdout when twistd would use it."""
    assert logs.twistd_destination(twistd) == destination


def test_observer_writes_to_the_file(tmp_path: Path) -> None:
    """A JSON observer on a path writes its lines there, and SIGUSR1 rotates
    the file as it does twistd's."""
    path = tmp_path / "node.log"
    before = signal.getsignal(signal.SIGUSR1)
    try:
        observer = logs.json_observer(str(path))
        assert signal.getsignal(signal.SIGUSR1) not in (before, None)
    finally:
        signal.signal(signal.SIGUSR1, before)
    Logger(namespace="wsha.test", observer=observer).info("hello {who}", who="ops")
    observer._outFile.close()  # type: ignore[attr-defined]
    assert json.loads(path.read_text())["who"] == "ops"


def test_install_sets_the_applications_observer() -> None:
    """On a twistd application the observer becomes its ILogObserver."""
    application = service.Application("wsha")
    observer = FileLogObserver(StringIO(), logs.json_line)
    logs.install(application, observer)
    assert application.getComponent(ILogObserver) is observer
    logs.install(service.MultiService(), observer)


class Twistd(usage.Options):
    """twistd's own options, as far as the plugin reads them."""

    optFlags: ClassVar[list[list[Any]]] = [["nodaemon", "n", ""], ["syslog", None, ""]]
    optParameters: ClassVar[list[list[Any]]] = [["logfile", "l", None, ""]]

    @property
    def subCommands(self) -> list[tuple[str, None, type[Options], str]]:
        """The ``wsha`` plugin."""
        return [("wsha", None, Options, "")]


def test_plugin_takes_twistds_log_file(clean_env: pytest.MonkeyPatch) -> None:
    """``twistd -n --logfile=x wsha --log-format json`` logs JSON lines to x."""
    twistd = Twistd()
    twistd.parseOptions(
        ["-n", "--logfile=n1.log", "wsha", "--jwt-secret=s", "--log-format=json"]
    )
    options = twistd.subOptions
    assert options["config"].log_format == "json"
    assert options["log_destination"] == "n1.log"


def test_json_to_syslog_is_refused(clean_env: pytest.MonkeyPatch) -> None:
    """JSON lines cannot go to syslog: a usage error says so."""
    with pytest.raises(usage.UsageError, match="syslog"):
        Twistd().parseOptions(
            ["--syslog", "wsha", "--jwt-secret=s", "--log-format=json"]
        )


def test_unknown_log_format_is_refused(clean_env: pytest.MonkeyPatch) -> None:
    """``WSHA_LOG_FORMAT`` must be text or json."""
    clean_env.setenv("WSHA_LOG_FORMAT", "xml")
    with pytest.raises(usage.UsageError, match="log-format"):
        Options().parseOptions(["--jwt-secret=s"])


def test_tac_node_logs_json_to_stdout(clean_env: pytest.MonkeyPatch) -> None:
    """A node built for a .tac file with ``log_format`` json hands twistd a
    JSON observer on stdout when it joins the application; a text node
    leaves twistd's own."""
    import sys

    from wsha.config import NodeConfig
    from wsha.tap import node_from_config

    application = service.Application("wsha")
    node = node_from_config(NodeConfig(jwt_secret="s", log_format="json"))
    node.setServiceParent(application)
    observer = application.getComponent(ILogObserver)
    assert observer is node.log_observer
    assert observer._outFile is sys.stdout  # type: ignore[attr-defined]

    plain = service.Application("wsha")
    node_from_config(NodeConfig(jwt_secret="s")).setServiceParent(plain)
    assert plain.getComponent(ILogObserver) is None
