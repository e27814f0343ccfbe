"""OrderedMultiService: children start one after another and stop in reverse."""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet.defer import inlineCallbacks, maybeDeferred


class OrderedMultiService(service.MultiService):
    """A MultiService that waits for each child's start before starting the next.

    Twisted's own MultiService starts children without waiting on the
    Deferreds they return; a gateway must not accept clients before its stores
    are connected, and must stop accepting before it disconnects them.
    """

    @inlineCallbacks
    def startService(self) -> Any:
        """Start the children in the order they were added, each when the last is up."""
        service.Service.startService(self)
        for child in list(self):
            yield maybeDeferred(child.startService)

    @inlineCallbacks
    def stopService(self) -> Any:
        """Stop the children in reverse order, each once the later ones have stopped."""
        service.Service.stopService(self)
        for child in reversed(list(self)):
            if child.running:
                yield maybeDeferred(child.stopService)
