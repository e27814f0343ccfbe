"""The admin CLI (:mod:`wsha.admin`, :mod:`wsha.admin_client`) on a fake HTTP layer."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from wsha.admin import build_parser, main, parse_audience, table
from wsha.admin_client import AdminError, CommandRefused, ControlClient

CONTROL = "http://127.0.0.1:8081"
NOW_MS = int(time.time() * 1000)

NODES = {
    "node": "gw-1",
    "nodes": [
        {
            "id": "gw-1",
            "url": "ws://127.0.0.1:8080/ws",
            "control_url": "http://127.0.0.1:8081",
            "version": "1.0",
            "state": "ready",
            "connections": 30,
            "started_at": NOW_MS - 3_600_000,
            "heartbeat_at": NOW_MS - 500,
        },
        {
            "id": "gw-2",
            "url": "ws://127.0.0.1:8090/ws",
            "control_url": "http://127.0.0.1:8091/",
            "version": "1.1",
            "state": "draining",
            "connections": 10,
            "started_at": NOW_MS - 60_000,
            "heartbeat_at": NOW_MS - 900,
        },
    ],
    "dead": ["gw-3"],
}

Answer = tuple[int, Any] | Callable[[Any], tuple[int, Any]]


class FakeHTTP:
    """Answers requests from a table of (method, URL) and records each call."""

    def __init__(self, answers: dict[tuple[str, str], Answer]):
        self.answers = answers
        self.calls: list[tuple[str, str, Any, dict[str, str]]] = []

    def __call__(
        self,
        method: str,
        url: str,
        body: Any,
        headers: dict[str, str],
        timeout: float,
    ) -> tuple[int, Any]:
        """The answer listed for (method, url); OSError if none (unreachable)."""
        self.calls.append((method, url, body, headers))
        answer = self.answers.get((method, url))
        if answer is None:
            raise OSError("connection refused")
        return answer(body) if callable(answer) else answer

    def posted(self, url: str) -> list[Any]:
        """The bodies POSTed to ``url``."""
        return [
            body for method, u, body, _ in self.calls if (method, u) == ("POST", url)
        ]


def run_cli(http: FakeHTTP, *argv: str) -> tuple[int, str]:
    """Run the CLI with ``argv`` on ``http``; its exit status and output."""
    out = io.StringIO()

    def client(args: Any) -> ControlClient:
        return ControlClient(
            args.control, args.token, transport=http, sleep=lambda _: None
        )

    status = main(["--control", CONTROL, "--token", "t0k", *argv], client, out)
    return status, out.getvalue()


def cluster(**more: Answer) -> FakeHTTP:
    """A two-node cluster's answers, plus ``more`` keyed "METHOD url"."""
    answers: dict[tuple[str, str], Answer] = {
        ("GET", f"{CONTROL}/v1/nodes"): (200, NODES),
        ("GET", "http://127.0.0.1:8081/readyz"): (200, {"ready": True}),
        ("GET", "http://127.0.0.1:8091/readyz"): (503, {"ready": False}),
    }
    for key, answer in more.items():
        method, url = key.split(" ", 1)
        answers[(method, url)] = answer
    return FakeHTTP(answers)


def test_status_lists_nodes_readiness_versions_and_load() -> None:
    """One row per node (state, readiness, version, connections) and a share of
    connections per version; the dead nodes last. The token goes along."""
    http = cluster()
    status, out = run_cli(http, "status")

    assert status == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line}
    assert rows["gw-1"][1:5] == ["ready", "yes", "1.0", "30"]
    assert rows["gw-2"][1:5] == ["draining", "NO", "1.1", "10"]
    assert rows["1.0"] == ["1.0", "1", "30", "75%"]
    assert rows["1.1"] == ["1.1", "1", "10", "25%"]
    assert "dead: gw-3" in out
    assert http.calls[0][3] == {"Authorization": "Bearer t0k"}


def test_status_as_json_carries_the_listing_and_readiness() -> None:
    """``--json`` prints the registry listing with a ready map."""
    status, out = run_cli(cluster(), "--json", "status")
    answer = json.loads(out)
    assert status == 0
    assert answer["ready"] == {"gw-1": True, "gw-2": False}
    assert [n["id"] for n in answer["nodes"]] == ["gw-1", "gw-2"]


def test_user_shows_where_each_session_is() -> None:
    """``user`` lists the sessions with online flag, node and epoch."""
    found = {
        "user": "alice",
        "online": True,
        "sessions": [
            {
                "session": "phone",
                "online": True,
                "node": "gw-2",
                "epoch": 12,
                "cursor": "5-0",
                "seen": NOW_MS,
            },
            {
                "session": "tab",
                "online": False,
                "node": None,
                "epoch": 3,
                "cursor": "0-0",
                "seen": NOW_MS,
            },
        ],
    }
    status, out = run_cli(
        cluster(**{f"GET {CONTROL}/v1/users/alice": (200, found)}), "user", "alice"
    )
    assert status == 0
    assert "1 of 2 sessions online" in out
    assert any(
        line.split()[:4] == ["phone", "yes", "gw-2", "12"] for line in out.splitlines()
    )
    assert any(line.split()[:3] == ["tab", "no", "-"] for line in out.splitlines())


def sessions_of(*online: tuple[str, int]) -> dict[str, Any]:
    """A user lookup answer with ``online`` (session, epoch) pairs online."""
    return {
        "user": "alice",
        "sessions": [
            {"session": s, "online": True, "node": "gw-2", "epoch": e}
            for s, e in online
        ],
    }


def test_kick_waits_until_the_session_is_offline() -> None:
    """``kick`` posts the user and session, then polls the lookup until the
    kicked session is no longer online at its epoch."""
    lookups = iter([sessions_of(("phone", 12)), sessions_of()])
    http = cluster(
        **{
            f"POST {CONTROL}/v1/admin/kick": (
                200,
                {
                    "user": "alice",
                    "kicked": [{"session": "phone", "node": "gw-2", "epoch": 12}],
                },
            ),
            f"GET {CONTROL}/v1/users/alice": lambda _: (200, next(lookups)),
        }
    )
    status, out = run_cli(http, "kick", "alice", "phone")

    assert status == 0
    assert http.posted(f"{CONTROL}/v1/admin/kick") == [
        {"user": "alice", "session": "phone"}
    ]
    assert "alice/phone on gw-2: closed" in out


def test_kick_fails_if_the_session_stays_online() -> None:
    """A session still online at the kicked epoch after the wait: exit status 1."""
    http = cluster(
        **{
            f"POST {CONTROL}/v1/admin/kick": (
                200,
                {
                    "user": "alice",
                    "kicked": [{"session": "phone", "node": "gw-2", "epoch": 12}],
                },
            ),
            f"GET {CONTROL}/v1/users/alice": (200, sessions_of(("phone", 12))),
        }
    )
    status, out = run_cli(http, "kick", "alice", "--wait", "0")
    assert status == 1 and "still online" in out


def test_kick_with_nothing_online_says_so() -> None:
    """No session online: nothing to kick, and that is not an error."""
    http = cluster(
        **{f"POST {CONTROL}/v1/admin/kick": (200, {"user": "bob", "kicked": []})}
    )
    status, out = run_cli(http, "kick", "bob", "--no-wait")
    assert status == 0 and "nothing to kick" in out


def test_drain_goes_to_the_named_nodes_control_url() -> None:
    """``drain NODE`` finds the node's control URL in the registry and posts the
    window there."""
    url = "http://127.0.0.1:8091/v1/admin/drain"
    http = cluster(**{f"POST {url}": (202, {"node": "gw-2", "window": 30})})
    status, out = run_cli(http, "drain", "gw-2", "--window", "30")

    assert status == 0 and "gw-2 draining over 30s" in out
    assert http.posted(url) == [{"window": 30.0}]


def test_drain_of_a_node_without_the_command_says_so() -> None:
    """A node whose API has no drain endpoint (HTML 404) is reported as such."""
    url = "http://127.0.0.1:8091/v1/admin/drain"
    status, _ = run_cli(cluster(**{f"POST {url}": (404, None)}), "drain", "gw-2")
    assert status == 1


def test_commands_on_an_unknown_node_fail_naming_the_known_ones() -> None:
    """A node id the registry does not have is an error listing those it has."""
    client = ControlClient(CONTROL, None, transport=cluster())
    with pytest.raises(AdminError, match="gw-1, gw-2"):
        client.move("gw-9", 0.5, 10)


def test_move_posts_share_and_window_to_the_node() -> None:
    """``move NODE --share S --over T`` posts to that node and reports the answer."""
    url = "http://127.0.0.1:8081/v1/admin/move"
    answer = {"node": "gw-1", "sessions": 30, "moving": 8, "over_s": 20.0}
    http = cluster(**{f"POST {url}": (202, {**answer, "cancelled": 0})})
    status, out = run_cli(http, "move", "gw-1", "--share", "0.25", "--over", "20")

    assert status == 0 and "moving 8 of 30 sessions off gw-1 over 20.0s" in out
    assert http.posted(url) == [{"share": 0.25, "over_s": 20.0}]


def test_broadcast_sends_json_or_text_to_the_audience() -> None:
    """The body is JSON unless ``--text``; the audience is all, tag:T or node:N."""
    url = f"{CONTROL}/v1/broadcast"
    http = cluster(**{f"POST {url}": (200, {"id": "9-0", "duplicate": False})})

    status, out = run_cli(
        http, "broadcast", "--audience", "tag:eu", "--from", "ops", '{"a": 1}'
    )
    assert status == 0 and "broadcast 9-0 stored" in out
    run_cli(http, "broadcast", "--audience", "all", "--text", "--id", "m1", "hi")

    assert http.posted(url) == [
        {"body": {"a": 1}, "audience": {"tag": "eu"}, "from": "ops"},
        {"body": "hi", "audience": "all", "id": "m1"},
    ]


def test_broadcast_body_that_is_not_json_is_refused() -> None:
    """Without ``--text`` a body that is not JSON fails before anything is sent."""
    http = cluster()
    status, _ = run_cli(http, "broadcast", "--audience", "all", "hello there")
    assert status == 1 and http.calls == []


def test_refusals_and_unreachable_nodes_exit_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An API error prints its code and message; no answer at all says so."""
    http = cluster(
        **{
            f"GET {CONTROL}/v1/users/a%20b": (
                400,
                {"error": "bad_recipient", "message": "not a valid user id"},
            )
        }
    )
    assert run_cli(http, "user", "a b")[0] == 1
    assert "bad_recipient: not a valid user id" in capsys.readouterr().err

    assert run_cli(FakeHTTP({}), "status")[0] == 1
    assert "no answer" in capsys.readouterr().err


def test_refusal_carries_status_and_code() -> None:
    """CommandRefused keeps the HTTP status and the API's error code."""
    client = ControlClient(
        CONTROL,
        None,
        transport=FakeHTTP(
            {
                ("GET", f"{CONTROL}/v1/nodes"): (
                    401,
                    {"error": "unauthorized", "message": "no"},
                )
            }
        ),
    )
    with pytest.raises(CommandRefused) as refused:
        client.nodes()
    assert (refused.value.status, refused.value.error) == (401, "unauthorized")


def test_audience_and_usage_errors() -> None:
    """Audiences are all, tag:T or node:N; a missing subcommand is a usage error."""
    assert parse_audience("node:gw-1") == {"node": "gw-1"}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["broadcast", "--audience", "everyone", "x"])
    with pytest.raises(SystemExit):
        build_parser().parse_args([])


def test_table_aligns_columns_and_right_aligns_numbers() -> None:
    """Text columns pad on the right, numeric ones on the left."""
    assert table(["A", "N"], [["x", 5], ["yyy", 10]]).splitlines() == [
        "A     N",
        "x     5",
        "yyy  10",
    ]
