"""Audiences, and the broadcast record between nodes (:mod:`wsha.topics`)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from wsha import topics
from wsha.broadcast.entry import (
    EVERYONE,
    Audience,
    BroadcastEntry,
    decode_audience,
    parse_audience,
)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("all", EVERYONE),
        ({"tag": "gold"}, Audience("tag", "gold")),
        ({"tag": "team/eu-1"}, Audience("tag", "team/eu-1")),
        ({"node": "gw-1.eu_2"}, Audience("node", "gw-1.eu_2")),
    ],
)
def test_valid_audiences_parse(given: Any, expected: Audience) -> None:
    """Each audience form parses, and spells itself back the same way."""
    audience = parse_audience(given)
    assert audience == expected
    assert audience.to_json() == given
    assert decode_audience(audience.encode()) == audience


@pytest.mark.parametrize(
    "given",
    [
        None,
        "everyone",
        "",
        [],
        {},
        {"tag": ""},
        {"tag": "a b"},
        {"tag": 3},
        {"tag": "x" * 129},
        {"node": "gw/1"},
        {"node": ""},
        {"team": "x"},
        {"tag": "x", "node": "y"},
    ],
)
def test_bad_audiences_are_refused(given: Any) -> None:
    """Anything else is a ValueError naming the problem."""
    with pytest.raises(ValueError, match="audience"):
        parse_audience(given)


def test_stored_audience_that_is_not_json_is_refused() -> None:
    """A stored audience that is not JSON is a ValueError too."""
    with pytest.raises(ValueError, match="not JSON"):
        decode_audience("{")


def test_record_round_trip_keeps_the_body_text() -> None:
    """A record decodes to the same entry and previous id; the body stays the
    exact JSON text stored, so it is spliced into frames without re-encoding."""
    entry = BroadcastEntry("12-3", "ops", '{"text":"héllo"}', 99, Audience("tag", "g"))
    raw = topics.encode_broadcast_record(entry, "12-2")

    assert topics.decode_broadcast_record(raw) == (entry, "12-2")
    assert json.loads(raw)["kind"] == "broadcast"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kind", "inbox"),
        ("id", "x"),
        ("prev", None),
        ("from", 7),
        ("ts", True),
        ("ts", "5"),
        ("audience", "some"),
        ("body_json", {"a": 1}),
    ],
)
def test_malformed_records_are_refused(field: str, value: Any) -> None:
    """A record with a missing or wrong field is a ValueError."""
    entry = BroadcastEntry("12-3", "ops", "1", 99, EVERYONE)
    record = json.loads(topics.encode_broadcast_record(entry, "12-2"))
    record[field] = value
    with pytest.raises(ValueError):
        topics.decode_broadcast_record(json.dumps(record).encode())
