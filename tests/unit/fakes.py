"""Hand-written fakes of wsha's own interfaces, for unit tests.

Each fake records what it was asked and answers with a Deferred the test
fires by hand, so a test decides exactly when (and whether) a store replies.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock

from wsha.client_session import ClientSession
from wsha.gateway import Gateway
from wsha.inbox import AppendResult, InboxEntry
from wsha.sessions import Claim


def make_claim(epoch: int = 7, **overrides: Any) -> Claim:
    """A :class:`Claim` as the registry would return it, with ``overrides``."""
    values: dict[str, Any] = {
        "epoch": str(epoch),
        "previous_node": "",
        "previously_online": False,
        "replay_after": "0-0",
        "pending": 0,
        "trimmed": False,
        "resumed": False,
    }
    values.update(overrides)
    return Claim(**values)


def make_entry(entry_id: str, body: Any = None, sender: str = "bob") -> InboxEntry:
    """An inbox entry with id ``entry_id`` whose body is ``body`` as JSON."""
    return InboxEntry(entry_id, sender, json.dumps(body), 1000, f"c-{entry_id}")


class FakeRegistry:
    """A SessionRegistry whose every answer is a Deferred left for the test."""

    def __init__(self) -> None:
        self.claims: list[tuple[tuple[str, str, str, str | None], Deferred[Any]]] = []
        self.releases: list[tuple[str, str, str]] = []
        self.acks: list[tuple[str, str, str, str]] = []
        self.lookups: list[tuple[str, Deferred[Any]]] = []

    def claim(
        self, user: str, session: str, node: str, after: str | None
    ) -> Deferred[Any]:
        """Record a claim; the test fires the returned Deferred."""
        d: Deferred[Any] = Deferred()
        self.claims.append(((user, session, node, after), d))
        return d

    def release(self, user: str, session: str, epoch: str) -> Deferred[Any]:
        """Record a release; it succeeds at once."""
        self.releases.append((user, session, epoch))
        d: Deferred[Any] = Deferred()
        d.callback(True)
        return d

    def acknowledge(
        self, user: str, session: str, epoch: str, upto: str
    ) -> Deferred[Any]:
        """Record an acknowledgement; it succeeds at once."""
        self.acks.append((user, session, epoch, upto))
        d: Deferred[Any] = Deferred()
        d.callback(True)
        return d

    def lookup(self, user: str) -> Deferred[Any]:
        """Record a lookup; the test fires the returned Deferred."""
        d: Deferred[Any] = Deferred()
        self.lookups.append((user, d))
        return d


class FakeInbox:
    """An InboxStore whose appends and reads wait for the test to answer."""

    def __init__(self) -> None:
        self.appends: list[tuple[tuple[str, str, str, str, int], Deferred[Any]]] = []
        self.reads: list[tuple[tuple[str, str, int], Deferred[Any]]] = []

    def append(
        self, user: str, sender: str, client_id: str, body_json: str, ts: int
    ) -> Deferred[Any]:
        """Record an append; the test fires it with an :class:`AppendResult`."""
        d: Deferred[Any] = Deferred()
        self.appends.append(((user, sender, client_id, body_json, ts), d))
        return d

    def read_after(self, user: str, after: str, count: int) -> Deferred[Any]:
        """Record a read; the test fires it with a list of entries."""
        d: Deferred[Any] = Deferred()
        self.reads.append(((user, after, count), d))
        return d


def appended(entry_id: str, *nodes: str, duplicate: bool = False) -> AppendResult:
    """The result of an append that stored ``entry_id`` and names ``nodes``."""
    return AppendResult(entry_id, duplicate, frozenset(nodes))


class FakeBus:
    """A NoticeSender that records every notice it is asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], bytes | None]] = []

    def send(self, node_id: str, notice: bytes, key: bytes | None = None) -> None:
        """Record ``notice`` (decoded) for ``node_id``."""
        self.sent.append((node_id, json.loads(notice), key))


class FakeLink:
    """A ClientSession Link that keeps the frames sent and the close asked for."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.closes: list[tuple[int, str]] = []
        self.producer: IPushProducer | None = None

    def send_frame(self, payload: bytes) -> None:
        """Keep ``payload`` and its decoded JSON."""
        self.raw.append(payload)
        self.frames.append(json.loads(payload))

    def close(self, code: int, reason: str) -> None:
        """Keep the close code and reason."""
        self.closes.append((code, reason))

    def register_producer(self, producer: IPushProducer) -> None:
        """Keep the producer the session registered (a test pauses it by hand)."""
        self.producer = producer

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        """The frames sent so far whose ``type`` is ``kind``."""
        return [frame for frame in self.frames if frame.get("type") == kind]


class GatewayHarness:
    """A Gateway on fakes, with helpers to open client sessions on it.

    :param node_id: the gateway's node id.
    """

    def __init__(self, node_id: str = "gw-1") -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.inbox = FakeInbox()
        self.registry = FakeRegistry()
        self.bus = FakeBus()
        self.gateway = Gateway(
            node_id, self.inbox, self.registry, self.bus, self.clock, max_body_bytes=100
        )

    def connect(
        self, user: str = "alice", session: str = "phone", after: str | None = None
    ) -> tuple[ClientSession, FakeLink, Deferred[Any]]:
        """Start a ClientSession; return it, its link and its pending claim."""
        link = FakeLink()
        client = ClientSession(self.gateway, link, user, session, after)
        client.start()
        return client, link, self.registry.claims[-1][1]

    def online(
        self, epoch: int = 7, user: str = "alice", session: str = "phone", **claim: Any
    ) -> tuple[ClientSession, FakeLink]:
        """A session whose claim has returned with ``epoch``."""
        client, link, pending = self.connect(user, session)
        pending.callback(make_claim(epoch, **claim))
        return client, link
