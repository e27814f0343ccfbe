"""Registers the ``wsha`` twistd plugin: ``twistd -n wsha --help``."""

from twisted.application.service import ServiceMaker

wsha = ServiceMaker(
    "wsha",
    "wsha.tap",
    "A high-availability WebSocket gateway node.",
    "wsha",
)
