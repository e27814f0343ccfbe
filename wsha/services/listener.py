"""ListenerService: serves a factory on a Twisted endpoint description."""

from __future__ import annotations

import socket
from typing import Any

from twisted.application import service
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory


class ListenerService(service.Service):
    """Listens on an endpoint (``tcp:8080``, ``ssl:8443:...``) while running.

    Unlike Twisted's ``StreamServerEndpointService``, ``startService`` returns
    a Deferred that fires once listening, which the node's ordered start and
    its readiness need, and the bound port is public.

    :param reactor: the reactor to listen with.
    :param description: a Twisted server endpoint string.
    :param factory: the protocol factory to serve.
    """

    def __init__(self, reactor: Any, description: str, factory: IProtocolFactory):
        self._reactor = reactor
        self.description = description
        self.factory = factory
        self.port: IListeningPort | None = None

    @inlineCallbacks
    def startService(self) -> Any:
        """Fire once the port is listening."""
        service.Service.startService(self)
        endpoint = serverFromString(self._reactor, self.description)
        self.port = yield endpoint.listen(self.factory)

    @inlineCallbacks
    def stopService(self) -> Any:
        """Fire once the port no longer listens."""
        service.Service.stopService(self)
        if self.port is not None:
            yield self.port.stopListening()
            self.port = None

    def url(self, scheme: str, path: str = "") -> str:
        """The URL this listener serves at, or "" while it does not listen.

        ``scheme`` is the plain one (``ws``, ``http``); an ``ssl:`` or ``tls:``
        endpoint gets its secure form. A wildcard address becomes the host name.
        """
        if self.port is None:
            return ""
        address: Any = self.port.getHost()
        host = str(getattr(address, "host", ""))
        if host in ("", "0.0.0.0", "::"):
            host = socket.gethostname()
        elif ":" in host:
            host = f"[{host}]"
        if self.description.split(":", 1)[0] in ("ssl", "tls"):
            scheme += "s"
        return f"{scheme}://{host}:{address.port}{path}"
