"""Bad input on a real node: a clear error or close code, nothing else affected."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
import pytest_twisted

from tests.integration.conftest import Cluster
from tests.integration.support import connect_raw, http_json, wait_for, within
from tests.integration.test_delivery import users
from wsha import wire


def ws(cluster: Cluster, query: str) -> str:
    """The URL of node 1's WebSocket endpoint with ``query``."""
    return f"{cluster.nodes[0].ws_url}?{query}"


@pytest_twisted.inlineCallbacks
def open_session(cluster: Cluster, user: str) -> Any:
    """A raw connection of ``user`` that has received its welcome."""
    peer = yield connect_raw(ws(cluster, f"token={cluster.token(user)}&session=s1"))
    yield wait_for(lambda: peer.of_type("welcome"), 10, "welcome")
    return peer


@pytest.mark.parametrize(
    "make_token, reason",
    [
        (lambda c: None, "token missing"),
        (
            lambda c: jwt.encode(
                {"sub": "eve"},
                "not-the-secret-but-as-long-as-one-32",
                algorithm="HS256",
            ),
            "invalid",
        ),
        (
            lambda c: jwt.encode(
                {"sub": "eve", "exp": int(time.time()) - 60},
                c.secret,
                algorithm="HS256",
            ),
            "expired",
        ),
        (
            lambda c: jwt.encode(
                {"exp": int(time.time()) + 60}, c.secret, algorithm="HS256"
            ),
            "invalid",
        ),
        (lambda c: "not.a.jwt", "invalid"),
    ],
    ids=["missing", "bad-signature", "expired", "no-sub", "garbage"],
)
@pytest_twisted.inlineCallbacks
def test_bad_tokens_close_with_4401(
    cluster: Cluster, make_token: Any, reason: str
) -> Any:
    """Missing, badly signed, expired, sub-less or garbled tokens close with 4401."""
    token = make_token(cluster)
    query = "session=s1" + (f"&token={token}" if token else "")
    peer = yield connect_raw(ws(cluster, query))
    code, text = yield within(peer.closed)
    assert code == wire.CLOSE_UNAUTHORIZED
    assert reason in text
    assert peer.of_type("welcome") == []


@pytest_twisted.inlineCallbacks
def test_bearer_header_is_accepted(cluster: Cluster) -> Any:
    """The token may come in an ``Authorization: Bearer`` header, not the query."""
    (user,) = users("hdr")
    peer = yield connect_raw(
        ws(cluster, "session=s1"),
        headers={"Authorization": f"Bearer {cluster.token(user)}"},
    )
    yield wait_for(lambda: peer.of_type("welcome"), 10, "welcome")
    assert peer.of_type("welcome")[0]["user"] == user
    peer.protocol.sendClose(1000)
    yield within(peer.closed)


@pytest_twisted.inlineCallbacks
def test_missing_session_closes_with_policy_code(cluster: Cluster) -> Any:
    """A connection without a ``session`` parameter closes with 1008."""
    (user,) = users("nosession")
    peer = yield connect_raw(ws(cluster, f"token={cluster.token(user)}"))
    code, _ = yield within(peer.closed)
    assert code == wire.CLOSE_POLICY


@pytest_twisted.inlineCallbacks
def test_malformed_group_after_closes_with_policy_code(cluster: Cluster) -> Any:
    """A ``group_after`` that is not an object of group names to message ids
    closes with 1008 before any welcome."""
    (user,) = users("groupafter")
    for value in (
        "%5B1%5D",
        "%7B%22g%22%3A%225%22%7D",
        "%7B%22a%20b%22%3A%221-0%22%7D",
    ):
        query = f"token={cluster.token(user)}&session=s&group_after={value}"
        peer = yield connect_raw(ws(cluster, query))
        code, _ = yield within(peer.closed)
        assert code == wire.CLOSE_POLICY
        assert not peer.of_type("welcome")


@pytest_twisted.inlineCallbacks
def test_wrong_path_is_refused_at_handshake(cluster: Cluster) -> Any:
    """A WebSocket handshake on any path but /ws is refused (HTTP 404)."""
    url = cluster.nodes[0].ws_url.replace("/ws", "/elsewhere")
    peer = yield connect_raw(url)
    with pytest.raises(ConnectionError):
        yield within(peer.opened)


@pytest_twisted.inlineCallbacks
def test_bad_frames_get_errors_and_the_connection_keeps_working(
    cluster: Cluster,
) -> Any:
    """Malformed JSON, a non-object, an unknown type, a send without an id or with
    a bad recipient, a binary frame, and JSON a browser could not parse back
    (NaN, a lone surrogate, absurd nesting) each get an error frame; the
    connection stays open and a good send afterwards is acknowledged."""
    (user, friend) = users("fuzz", "friend")
    peer = yield open_session(cluster, user)
    peer.send_text("{not json")
    peer.send_text("[1, 2]")
    peer.send_json({"type": "teleport", "id": "t1"})
    peer.send_json({"type": "send", "to": friend, "body": 1})
    peer.send_json({"type": "send", "id": "x1", "to": "bad user!", "body": 1})
    peer.send_json({"type": "ack", "upto": "yesterday"})
    peer.send_binary(b"\x00\x01")
    peer.send_text('{"type": "send", "id": "n1", "to": "' + friend + '", "body": NaN}')
    peer.send_text('{"type": "ping", "id": "\\ud800"}')
    peer.send_text("[" * 50_000 + "]" * 50_000)
    peer.send_json({"type": "send", "id": "ok1", "to": friend, "body": {"fine": True}})
    yield wait_for(lambda: peer.of_type("ack"), 10, "ack of the good send")

    errors = [(e["code"], e.get("id"), e["retry"]) for e in peer.of_type("error")]
    assert errors == [
        ("bad_json", None, False),
        ("bad_frame", None, False),
        ("unknown_type", "t1", False),
        ("bad_frame", None, False),
        ("bad_recipient", "x1", False),
        ("bad_frame", None, False),
        ("binary_not_supported", None, False),
        ("bad_json", None, False),
        ("bad_json", None, False),
        ("bad_json", None, False),
    ]
    assert [a["id"] for a in peer.of_type("ack")] == ["ok1"]
    assert peer.close_code is None
    peer.protocol.sendClose(1000)
    yield within(peer.closed)


@pytest_twisted.inlineCallbacks
def test_oversize_message_closes_with_1009_and_loses_nothing_accepted(
    cluster: Cluster,
) -> Any:
    """A frame over the size limit closes with 1009; what was acknowledged before
    it is still delivered to its recipient."""
    (user, friend) = users("big", "friend")
    peer = yield open_session(cluster, user)
    peer.send_json({"type": "send", "id": "before", "to": friend, "body": {"seq": 0}})
    yield wait_for(lambda: peer.of_type("ack"), 10, "ack")
    peer.send_json(
        {"type": "send", "id": "huge", "to": friend, "body": "x" * (200 * 1024)}
    )
    code, _ = yield within(peer.closed)
    assert code == wire.CLOSE_TOO_BIG

    reader = yield open_session(cluster, friend)
    yield wait_for(lambda: reader.of_type("message"), 10, "the accepted message")
    assert [m["body"] for m in reader.of_type("message")] == [{"seq": 0}]
    reader.protocol.sendClose(1000)
    yield within(reader.closed)


@pytest_twisted.inlineCallbacks
def test_body_over_the_body_limit_gets_an_error_not_a_close(cluster: Cluster) -> Any:
    """A send whose body is over max-body-bytes but whose frame fits is refused
    with ``body_too_big`` and the connection stays open."""
    (user, friend) = users("body", "friend")
    peer = yield open_session(cluster, user)
    peer.send_json(
        {"type": "send", "id": "b1", "to": friend, "body": "y" * (100 * 1024)}
    )
    yield wait_for(lambda: peer.of_type("error"), 10, "error frame")
    assert peer.of_type("error")[0]["code"] == "body_too_big"
    assert peer.close_code is None
    peer.protocol.sendClose(1000)
    yield within(peer.closed)


@pytest_twisted.inlineCallbacks
def test_control_send_rejects_bad_requests(cluster: Cluster) -> Any:
    """The control API answers malformed sends with 400 and a reason."""
    url = f"{cluster.nodes[0].control_url}/v1/send"
    status, reply = yield http_json("POST", url, {"to": "bad user", "body": 1})
    assert status == 400 and reply["error"] == "bad_recipient"
    status, reply = yield http_json("POST", url, {"to": "someone"})
    assert status == 400 and reply["error"] == "bad_frame"
    for body in (float("nan"), "\ud800", float("-inf")):
        status, reply = yield http_json("POST", url, {"to": "someone", "body": body})
        assert (status, reply["error"]) == (400, "bad_json")
    status, reply = yield http_json(
        "GET", f"{cluster.nodes[0].control_url}/v1/users/a%20b"
    )
    assert status == 400
