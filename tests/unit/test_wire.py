"""Unit tests for :mod:`wsha.wire`: client frame parsing and server frame encoding."""

from __future__ import annotations

import json

import pytest

from wsha import wire

LIMIT = 64


@pytest.mark.parametrize(
    ("text", "code", "frame_id"),
    [
        ("{not json", "bad_json", None),
        ("[1, 2]", "bad_frame", None),
        ('"send"', "bad_frame", None),
        ('{"id": "x"}', "bad_frame", "x"),
        ('{"type": 5, "id": "x"}', "bad_frame", "x"),
        ('{"type": "subscribe!", "id": "x"}', "unknown_type", "x"),
        ('{"type": "subscribe", "id": "x"}', "bad_frame", "x"),
        ('{"type": "subscribe", "id": "x", "group": "a b"}', "bad_group", "x"),
        ('{"type": "subscribe", "id": "x", "instrument": 5}', "bad_instrument", "x"),
        ('{"type": "subscribe", "group": "g", "instrument": "i"}', "bad_frame", None),
        ('{"type": "subscribe", "group": "g", "after": "7"}', "bad_frame", None),
        ('{"type": "subscribe", "group": "g", "presence": 1}', "bad_frame", None),
        (
            '{"type": "subscribe", "instrument": "i", "presence": true}',
            "bad_frame",
            None,
        ),
        ('{"type": "unsubscribe", "id": "x"}', "bad_frame", "x"),
        ('{"type": "publish", "group": "g", "body": 1}', "bad_frame", None),
        ('{"type": "publish", "id": "x", "body": 1}', "bad_group", "x"),
        ('{"type": "publish", "id": "x", "group": "g"}', "bad_frame", "x"),
        ('{"type": "presence", "id": "x"}', "bad_group", "x"),
        ('{"type": "ack", "upto": "1-0", "group": ""}', "bad_group", None),
        ('{"type": "ack", "upto": "1-0", "broadcast": "yes"}', "bad_frame", None),
        ('{"type": "send", "to": "bob", "body": 1}', "bad_frame", None),
        ('{"type": "send", "id": "", "to": "bob", "body": 1}', "bad_frame", None),
        ('{"type": "send", "id": 9, "to": "bob", "body": 1}', "bad_frame", None),
        ('{"type": "send", "id": "x", "body": 1}', "bad_recipient", "x"),
        ('{"type": "send", "id": "x", "to": "b b", "body": 1}', "bad_recipient", "x"),
        ('{"type": "send", "id": "x", "to": 42, "body": 1}', "bad_recipient", "x"),
        ('{"type": "send", "id": "x", "to": "bob"}', "bad_frame", "x"),
        ('{"type": "ack", "id": "x"}', "bad_frame", "x"),
        ('{"type": "ack", "upto": "12"}', "bad_frame", None),
        ('{"type": "ack", "upto": "1-2-3"}', "bad_frame", None),
    ],
)
def test_bad_frames_raise_their_error_code(
    text: str, code: str, frame_id: str | None
) -> None:
    """Each malformed frame raises FrameError with its code and the frame's id."""
    with pytest.raises(wire.FrameError) as raised:
        wire.parse_client_frame(text, LIMIT)
    assert raised.value.code == code
    assert raised.value.frame_id == frame_id
    assert code in wire.ERRORS


def test_send_id_longer_than_limit_is_refused() -> None:
    """A send id over MAX_ID_LENGTH characters is a bad_frame."""
    frame = {"type": "send", "id": "x" * (wire.MAX_ID_LENGTH + 1), "to": "b", "body": 1}
    with pytest.raises(wire.FrameError) as raised:
        wire.parse_client_frame(json.dumps(frame), LIMIT)
    assert raised.value.code == "bad_frame"


def test_body_over_limit_is_body_too_big() -> None:
    """A body whose JSON is over the limit is refused; one at the limit passes."""
    at_limit = "a" * (LIMIT - 2)
    frame = {"type": "send", "id": "x", "to": "bob", "body": at_limit}
    assert wire.parse_client_frame(json.dumps(frame), LIMIT) == wire.Send(
        "bob", "x", at_limit
    )

    frame["body"] = at_limit + "a"
    with pytest.raises(wire.FrameError) as raised:
        wire.parse_client_frame(json.dumps(frame), LIMIT)
    assert (raised.value.code, raised.value.frame_id) == ("body_too_big", "x")


def test_subscription_frames_parse() -> None:
    """subscribe, unsubscribe, publish, presence and group acks parse whole."""

    def parse(frame: dict[str, object]) -> wire.ClientFrame:
        return wire.parse_client_frame(json.dumps(frame), LIMIT)

    assert parse(
        {
            "type": "subscribe",
            "id": "r",
            "group": "room/1",
            "after": "5-1",
            "presence": True,
        }
    ) == wire.Subscribe("r", group="room/1", after="5-1", presence=True)
    assert parse({"type": "subscribe", "instrument": "EUR.USD"}) == wire.Subscribe(
        None, instrument="EUR.USD"
    )
    assert parse({"type": "unsubscribe", "id": "u", "group": "g"}) == (
        wire.Unsubscribe("u", group="g")
    )
    assert parse({"type": "publish", "id": "p", "group": "g", "body": [1]}) == (
        wire.Publish("p", "g", [1])
    )
    assert parse({"type": "presence", "group": "g"}) == wire.PresenceQuery(None, "g")
    assert parse({"type": "ack", "group": "g", "upto": "1-0"}) == wire.Ack(
        "1-0", group="g"
    )
    assert parse({"type": "ack", "broadcast": True, "upto": "1-0"}) == wire.Ack(
        "1-0", broadcast=True
    )


def test_publish_body_limit_applies() -> None:
    """A publish body over the limit is body_too_big, like a send's."""
    frame = {"type": "publish", "id": "x", "group": "g", "body": "x" * LIMIT}
    with pytest.raises(wire.FrameError) as raised:
        wire.parse_client_frame(json.dumps(frame), LIMIT)
    assert (raised.value.code, raised.value.frame_id) == ("body_too_big", "x")


def test_group_message_splices_body() -> None:
    """A group_message frame is valid JSON carrying the stored body unchanged."""
    frame = json.loads(wire.encode_group_message("g", "5-0", "ann", '{"a":1}', 9))
    assert frame == {
        "type": "group_message",
        "group": "g",
        "id": "5-0",
        "from": "ann",
        "ts": 9,
        "body": {"a": 1},
    }


def test_body_limit_counts_encoded_bytes() -> None:
    """The body limit is in UTF-8 bytes, so multi-byte text counts at its size."""
    # 30 characters, 90 bytes once encoded: over a 64-byte limit.
    frame = {"type": "send", "id": "x", "to": "bob", "body": "\u20ac" * 30}
    with pytest.raises(wire.FrameError) as raised:
        wire.parse_client_frame(json.dumps(frame), LIMIT)
    assert raised.value.code == "body_too_big"


def test_valid_frames_parse() -> None:
    """send, ack and ping parse into their dataclasses; null is a valid body."""
    send = '{"type": "send", "id": "c-1", "to": "u@x.io", "body": null}'
    assert wire.parse_client_frame(send, LIMIT) == wire.Send("u@x.io", "c-1", None)
    ack = '{"type": "ack", "upto": "1700000000000-3"}'
    assert wire.parse_client_frame(ack, LIMIT) == wire.Ack("1700000000000-3")
    assert wire.parse_client_frame('{"type": "ping", "id": "p"}', LIMIT) == wire.Ping(
        "p"
    )
    assert wire.parse_client_frame('{"type": "ping", "id": 3}', LIMIT) == wire.Ping(
        None
    )


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("0-0", True),
        ("1700000000000-12", True),
        ("12", False),
        ("a-1", False),
        ("-1-0", False),
        ("1-", False),
        ("1" * 21 + "-0", False),
    ],
)
def test_stream_id_validation(value: str, valid: bool) -> None:
    """Only ``<digits>-<digits>`` strings are inbox ids."""
    assert wire.is_valid_stream_id(value) is valid


def test_stream_ids_order_numerically() -> None:
    """Ids compare as (ms, seq) integer pairs, not as strings."""
    ids = ["10-0", "9-12", "9-2", "100-0", "9-10"]
    assert sorted(ids, key=wire.stream_id_key) == [
        "9-2",
        "9-10",
        "9-12",
        "10-0",
        "100-0",
    ]
    assert wire.stream_id_key("5") == (5, 0)


@pytest.mark.parametrize(
    ("user", "valid"),
    [
        ("42", True),
        ("a.b-c_d@e:f", True),
        ("", False),
        ("a b", False),
        ("x" * 128, True),
        ("x" * 129, False),
        ("\u00e9", False),
    ],
)
def test_user_id_validation(user: str, valid: bool) -> None:
    """User ids are 1-128 characters from a fixed ASCII set."""
    assert wire.is_valid_user_id(user) is valid


def test_error_frame_carries_retry_and_id() -> None:
    """error_frame sets retry from the code table and includes the id only if given."""
    assert wire.error_frame("unavailable", "down", "c-1") == {
        "type": "error",
        "code": "unavailable",
        "message": "down",
        "retry": True,
        "id": "c-1",
    }
    assert wire.error_frame("bad_json", "no") == {
        "type": "error",
        "code": "bad_json",
        "message": "no",
        "retry": False,
    }


@pytest.mark.parametrize("body", [{"text": 'h\u00e9 "q"', "n": [1, 2.5]}, None, "s", 0])
def test_encode_message_splices_body_into_valid_json(body: object) -> None:
    """encode_message yields one JSON object holding exactly the stored body."""
    raw = wire.encode_message("17-3", "bob", wire.encode_body(body), 1234)
    assert json.loads(raw) == {
        "type": "message",
        "id": "17-3",
        "from": "bob",
        "ts": 1234,
        "body": body,
    }
    assert raw.endswith(b',"body":' + wire.encode_body(body).encode() + b"}")


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ('{"room/1": "5-0"}', True),
        ("{}", True),
        ("[]", False),
        ('{"room": 5}', False),
        ('{"a b": "1-0"}', False),
        ("{not json", False),
    ],
)
def test_group_positions_parse(text: str, valid: bool) -> None:
    """``group_after`` is an object of valid group names to message ids."""
    if valid:
        assert wire.parse_group_positions(text) == json.loads(text)
    else:
        with pytest.raises(ValueError):
            wire.parse_group_positions(text)


def test_group_positions_are_bounded() -> None:
    """More groups than the limit are refused."""
    many = {f"g{i}": "1-0" for i in range(wire.MAX_GROUP_POSITIONS + 1)}
    with pytest.raises(ValueError):
        wire.parse_group_positions(json.dumps(many))


@pytest.mark.parametrize(
    "text",
    [
        '{"type": "send", "id": "x", "to": "b", "body": NaN}',
        '{"type": "publish", "id": "x", "group": "g", "body": {"v": -Infinity}}',
        '{"type": "ping", "id": "\\ud800"}',
        '{"type": "send", "id": "x", "to": "b", "body": "\\udfff"}',
        "[" * 100_000 + "]" * 100_000,
    ],
)
def test_what_a_browser_could_not_parse_is_bad_json(text: str) -> None:
    """NaN, Infinity, lone surrogates and absurd nesting are refused as bad_json,
    never stored for other clients to choke on."""
    with pytest.raises(wire.FrameError) as raised:
        wire.parse_client_frame(text, LIMIT)
    assert raised.value.code == "bad_json"


def test_paired_surrogates_are_fine() -> None:
    """An escaped surrogate pair is an ordinary character (an emoji here)."""
    frame = '{"type": "ping", "id": "\\ud83d\\ude00"}'
    assert wire.parse_client_frame(frame, LIMIT) == wire.Ping("\U0001f600")


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("18446744073709551615-5", True),
        ("18446744073709551616-0", False),
        ("99999999999999999999-1", False),
        ("1-18446744073709551616", False),
        ("18446744073709551615-18446744073709551615", False),
    ],
)
def test_stream_ids_must_fit_redis(value: str, valid: bool) -> None:
    """Ids Redis cannot read after are not ids: each part fits 64 bits, and the
    very last id is refused."""
    assert wire.is_valid_stream_id(value) is valid
