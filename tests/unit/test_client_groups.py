"""Unit tests for :class:`wsha.client_groups.ClientGroups` (the client's group side)."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from wsha.client_groups import ClientGroups, GroupRequestFailed


class ClientGroupsTests(SynchronousTestCase):
    """Per-group dedupe, acks, and requests repeated until answered."""

    def setUp(self) -> None:
        self.written: list[dict[str, Any]] = []
        self.got: list[str] = []
        self.resyncs: list[dict[str, Any]] = []
        self.groups = ClientGroups(
            self.write,
            on_group_message=lambda f: self.got.append(f["id"]),
            on_resync=self.resyncs.append,
        )

    def write(self, frame: dict[str, Any]) -> bool:
        """Record a written frame."""
        self.written.append(frame)
        return True

    def message(self, group: str, entry_id: str) -> None:
        """Hand a group_message to the client."""
        self.groups.on_frame({"type": "group_message", "group": group, "id": entry_id})

    def test_replayed_messages_are_dropped_per_group(self) -> None:
        """An id not above the last one handled in its group is dropped; other
        groups keep their own positions."""
        for group, entry_id in [
            ("a", "2-0"),
            ("a", "10-0"),
            ("a", "9-0"),
            ("b", "3-0"),
        ]:
            self.message(group, entry_id)
        self.assertEqual(self.got, ["2-0", "10-0", "3-0"])
        self.assertEqual(self.groups.duplicates_dropped, 1)

    def test_acks_name_each_subscribed_groups_last_id_once(self) -> None:
        """Due acks carry each subscribed group's last id, once until it moves."""
        self.groups.welcomed({"groups": {"a": {"after": "0-0"}}})
        self.message("a", "5-0")
        self.assertEqual(
            self.groups.acks(), [{"type": "ack", "group": "a", "upto": "5-0"}]
        )
        self.assertEqual(self.groups.acks(), [])

    def test_unanswered_request_is_written_again_after_welcome(self) -> None:
        """A subscribe not answered before a reconnect is written again; its
        answer fires the request's Deferred."""
        d = self.groups.request({"type": "subscribe", "group": "a"})
        self.groups.welcomed({"groups": {}})
        self.assertEqual(len(self.written), 2)
        answer = {"type": "subscribed", "id": self.written[0]["id"], "group": "a"}
        self.groups.on_frame(answer)
        self.assertEqual(self.successResultOf(d), answer)
        self.assertEqual(self.groups.subscribed, {"a"})

    def test_final_error_fails_the_request(self) -> None:
        """A request refused for good fails with the error's code."""
        d = self.groups.request({"type": "presence", "group": "a"})
        frame_id = self.written[0]["id"]
        self.groups.on_frame(
            {"type": "error", "id": frame_id, "code": "not_subscribed", "retry": False}
        )
        self.assertEqual(
            self.failureResultOf(d, GroupRequestFailed).value.code, "not_subscribed"
        )

    def test_truncated_group_in_welcome_asks_for_a_resync(self) -> None:
        """A restored group whose history lost messages is reported to on_resync."""
        self.groups.welcomed({"groups": {"a": {"after": "3-0", "truncated": True}}})
        self.assertEqual(self.resyncs, [{"group": "a", "after": "3-0"}])
