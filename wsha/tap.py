"""The ``wsha`` twistd plugin: options and the service they build.

``twistd -n wsha --port tcp:8080 --redis redis://127.0.0.1:6379/0 --kafka
127.0.0.1:9092`` runs a node. Every option may also come from the environment
as ``WSHA_<OPTION>`` (``WSHA_JWT_SECRET``, ``WSHA_NODE_ID``...); a command-line
option wins.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any, ClassVar

from twisted.python import usage

from wsha import logs
from wsha.config import NodeConfig
from wsha.node import GatewayNode


def _defaults() -> NodeConfig:
    return NodeConfig.from_environment()


def option_table() -> list[list[Any]]:
    """twistd options built from :class:`NodeConfig`'s fields, one per field.

    Each option's default is None so that an option not given leaves the
    environment's value in place; the built-in default is shown in the help.
    """
    table: list[list[Any]] = []
    for setting in fields(NodeConfig):
        help_text = setting.metadata["help"]
        if setting.default is not MISSING:
            shown = setting.default if setting.default != "" else "none"
            help_text = f"{help_text} [default: {shown}]"
        short = "p" if setting.name == "port" else None
        coerce = {"int": int, "float": float}.get(str(setting.type))
        row: list[Any] = [setting.name.replace("_", "-"), short, None, help_text]
        if coerce is not None:
            row.append(coerce)
        table.append(row)
    return table


class Options(usage.Options):
    """Command-line options of a gateway node."""

    synopsis = "[wsha options]"
    longdesc = (
        "Runs one node of the wsha WebSocket gateway. Clients connect to "
        "ws://<port>/ws; operators use the control port. Options can also be set "
        "as WSHA_<NAME> environment variables (dashes become underscores, "
        "WSHA_JWT_SECRET) or in a JSON file named by WSHA_CONFIG_FILE; the command "
        "line wins over the environment, which wins over the file."
    )

    optParameters: ClassVar[list[list[Any]]] = option_table()

    def postOptions(self) -> None:
        """Merge the environment with the command line and check the result."""
        try:
            config = _defaults()
            for key, value in self.items():
                if value is not None:
                    setattr(config, key.replace("-", "_"), value)
            config.check()
        except (ValueError, OSError) as e:
            raise usage.UsageError(str(e)) from None
        self["config"] = config

        # JSON lines go where twistd would have written its own lines.
        twistd = self.parent
        if (
            config.log_format == logs.JSON
            and twistd is not None
            and twistd.get("syslog")
        ):
            raise usage.UsageError("--log-format json cannot go to --syslog")
        self["log_destination"] = logs.twistd_destination(twistd)


def makeService(options: Options) -> Any:
    """Build a node from parsed options (used by twistd and by .tac files)."""
    from twisted.internet import reactor

    config = options["config"]
    node = GatewayNode(config, reactor)

    if config.log_format == logs.JSON:
        node.log_observer = logs.json_observer(options["log_destination"])
    return node


def node_from_config(config: NodeConfig) -> GatewayNode:
    """Build a node from a :class:`NodeConfig` (the .tac files' entry point).

    :raises ValueError: naming the first setting that cannot work.
    """
    from twisted.internet import reactor

    config.check()
    node = GatewayNode(config, reactor)

    if config.log_format == logs.JSON:
        # A .tac file cannot see twistd's --logfile: JSON goes to stdout.
        node.log_observer = logs.json_observer(logs.STDOUT)
    return node
