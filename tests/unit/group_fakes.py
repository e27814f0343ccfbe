"""Fakes for the group side of a node: a GroupStore whose answers a test fires."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed

from tests.unit.fakes import GatewayHarness
from wsha.groups import Joined, PresenceEntry, PublishResult
from wsha.services.group_fanout import GroupFanout
from wsha.services.redis_link import LinkSettings
from wsha.session_groups import GroupHub


class FakeGroupStore:
    """Records every call; reads and publishes wait for the test, the rest succeed."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.reads: list[tuple[tuple[str, str, int], Deferred[Any]]] = []
        self.publishes: list[tuple[tuple[Any, ...], Deferred[Any]]] = []
        self.head = "9-0"
        self.trimmed = ""
        self.present: list[PresenceEntry] = []

    def join(self, group: str, user: str, session: str, epoch: str, node: str) -> Any:
        """Record a join; the history's head is ``head``."""
        self.calls.append(("join", group, user, session, epoch, node))
        return succeed(Joined(self.head, self.trimmed, True))

    def leave(
        self,
        group: str,
        user: str,
        session: str,
        epoch: str,
        node: str,
        end_membership: bool = False,
    ) -> Any:
        """Record a leave."""
        self.calls.append(("leave", group, user, session, epoch, end_membership))
        return succeed(True)

    def subscribe(
        self,
        user: str,
        session: str,
        group: str,
        start: str,
        after: str | None,
        presence: bool,
    ) -> Any:
        """Record a subscription; it resumes after ``after`` or ``start``."""
        self.calls.append(("subscribe", user, session, group, start, after, presence))
        return succeed(after or start)

    def unsubscribe(self, user: str, session: str, group: str) -> Any:
        """Record an unsubscription."""
        self.calls.append(("unsubscribe", user, session, group))
        return succeed(True)

    def acknowledge(
        self, user: str, session: str, epoch: str, group: str, upto: str
    ) -> Any:
        """Record a group ack."""
        self.calls.append(("ack", group, upto, epoch))
        return succeed(True)

    def read_after(self, group: str, after: str, count: int) -> Deferred[Any]:
        """Record a history read; the test fires it."""
        d: Deferred[Any] = Deferred()
        self.reads.append(((group, after, count), d))
        return d

    def publish(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """Record a publish; the test fires it."""
        d: Deferred[Any] = Deferred()
        self.publishes.append(((*args, kwargs.get("member")), d))
        return d

    def presence(self, group: str) -> Any:
        """The present members set by the test."""
        return succeed(list(self.present))


def published(entry_id: str, duplicate: bool = False) -> PublishResult:
    """A publish's result."""
    return PublishResult(entry_id, duplicate)


class GroupHarness(GatewayHarness):
    """A Gateway on fakes with groups: a fake store and a fan-out without a link."""

    def __init__(self, node_id: str = "gw-1") -> None:
        super().__init__(node_id)
        self.store = FakeGroupStore()
        self.fanout = GroupFanout(None, LinkSettings())  # type: ignore[arg-type]
        self.gateway.groups = GroupHub(
            self.store,  # type: ignore[arg-type]
            self.fanout,
            self.gateway.live_nodes,
            max_groups=2,
        )
