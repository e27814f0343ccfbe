"""Helpers for integration tests: waiting on conditions, raw WebSocket peers, HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.threads import deferToThread


def _reactor() -> Any:
    # Looked up when used, not bound at import (pytest-twisted installs it).
    from twisted.internet import reactor

    return reactor


@defer.inlineCallbacks
def wait_for(
    condition: Callable[[], Any], timeout: float = 10.0, what: str = ""
) -> Any:
    """Fire once ``condition()`` is true; fail with AssertionError after ``timeout``.

    ``condition`` may return a value or a Deferred of one.
    """
    reactor = _reactor()
    deadline = reactor.seconds() + timeout
    while True:
        value = yield defer.maybeDeferred(condition)
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or condition}"
            )
        yield task.deferLater(reactor, 0.01, lambda: None)


def within(d: defer.Deferred[Any], timeout: float = 15.0) -> defer.Deferred[Any]:
    """``d``, failed with TimeoutError if it has not fired within ``timeout`` seconds.

    Every wait on the network in these tests goes through a deadline, so a
    node that never answers fails the test instead of hanging the suite.
    """
    return d.addTimeout(timeout, _reactor())


class RawProtocol(WebSocketClientProtocol):
    """A WebSocket peer that records every frame and the close code."""

    def onOpen(self) -> None:
        self.factory.peer.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.peer.frames.append(payload if isBinary else json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        peer = self.factory.peer
        peer.close_code, peer.close_reason = code, reason
        if not peer.opened.called:
            peer.opened.errback(ConnectionError(f"closed before open: {code} {reason}"))
        peer.closed.callback((code, reason))


@dataclass
class RawPeer:
    """A raw client connection: frames received, and how it closed."""

    frames: list[Any] = field(default_factory=list)
    opened: defer.Deferred[RawProtocol] = field(default_factory=defer.Deferred)
    closed: defer.Deferred[tuple[int | None, str | None]] = field(
        default_factory=defer.Deferred
    )
    close_code: int | None = None
    close_reason: str | None = None
    protocol: RawProtocol | None = None

    def send_json(self, frame: Any) -> None:
        """Send a JSON text frame."""
        self.send_text(json.dumps(frame))

    def send_text(self, text: str) -> None:
        """Send a raw text frame."""
        assert self.protocol is not None
        self.protocol.sendMessage(text.encode(), isBinary=False)

    def send_binary(self, data: bytes) -> None:
        """Send a binary frame."""
        assert self.protocol is not None
        self.protocol.sendMessage(data, isBinary=True)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        """The received JSON frames of one type."""
        return [f for f in self.frames if isinstance(f, dict) and f.get("type") == kind]


@defer.inlineCallbacks
def connect_raw(
    url: str, headers: dict[str, str] | None = None, max_message: int = 16 * 1024 * 1024
) -> Any:
    """Open a raw WebSocket to ``url``; fires with a :class:`RawPeer` once connected.

    The peer's ``opened`` Deferred fires on the WebSocket open (or fails if the
    server refused the handshake).
    """
    peer = RawPeer()
    factory = WebSocketClientFactory(url, headers=headers or {})
    factory.protocol = RawProtocol
    factory.peer = peer  # type: ignore[attr-defined]
    factory.setProtocolOptions(
        maxMessagePayloadSize=max_message, maxFramePayloadSize=max_message
    )
    parsed = urlparse(url)
    endpoint = TCP4ClientEndpoint(_reactor(), parsed.hostname, parsed.port, timeout=5)
    peer.protocol = yield endpoint.connect(factory)
    return peer


def _http(method: str, url: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def http_json(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> defer.Deferred[tuple[int, Any]]:
    """Make an HTTP request off the reactor thread; fires with (status, JSON)."""
    return deferToThread(_http, method, url, body, headers or {})
