"""Unit tests for :mod:`wsha.config`: checks and loading from the environment."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from twisted.trial.unittest import SynchronousTestCase

from wsha.config import NodeConfig


def good(**overrides: object) -> NodeConfig:
    """A configuration that passes check(), with ``overrides`` applied."""
    config = NodeConfig(node_id="n1", jwt_secret="s")
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


def test_good_config_passes_check() -> None:
    """A config with a secret and the default limits is accepted."""
    good().check()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"jwt_secret": ""}, "JWT key is required"),
        ({"max_body_bytes": 128 * 1024}, "max-body-bytes must be below"),
        ({"inbox_max_length": 0}, "inbox-max-length must be positive"),
        ({"inbox_ttl": -1}, "inbox-ttl must be positive"),
        ({"dedupe_ttl": 0}, "dedupe-ttl must be positive"),
        ({"session_ttl": 0}, "session-ttl must be positive"),
        ({"dedupe_ttl": 100, "inbox_ttl": 99}, "dedupe-ttl must not exceed"),
        ({"broadcast_topic": "bad topic"}, "broadcast-topic must be a Kafka topic"),
        ({"broadcast_topic": ""}, "broadcast-topic must be a Kafka topic"),
        ({"broadcast_history_length": 0}, "broadcast-history-length must be"),
    ],
)
def test_check_names_the_broken_setting(
    overrides: dict[str, object], message: str
) -> None:
    """check() raises ValueError naming the first setting that cannot work."""
    with pytest.raises(ValueError, match=message):
        good(**overrides).check()


def test_environment_variables_are_read_and_coerced() -> None:
    """WSHA_<FIELD> variables set fields, converted to each field's type."""
    config = NodeConfig.from_environment(
        {
            "WSHA_NODE_ID": "gw-1",
            "WSHA_JWT_SECRET": "k",
            "WSHA_MAX_BODY_BYTES": "1000",
            "WSHA_REDIS_TIMEOUT": "2.5",
            "WSHA_SOMETHING_ELSE": "ignored",
            "HOME": "/root",
        }
    )
    assert (config.node_id, config.jwt_secret) == ("gw-1", "k")
    assert config.max_body_bytes == 1000
    assert config.redis_timeout == 2.5
    assert config.port == NodeConfig.port


def test_config_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    """WSHA_CONFIG_FILE is loaded first; a WSHA_<FIELD> variable overrides it."""
    path = tmp_path / "node.json"
    path.write_text(
        json.dumps({"kafka": "10.0.0.1:9092", "node_id": "from-file", "inbox_ttl": 50})
    )
    config = NodeConfig.from_environment(
        {"WSHA_CONFIG_FILE": str(path), "WSHA_NODE_ID": "from-env"}
    )
    assert config.kafka == "10.0.0.1:9092"
    assert config.node_id == "from-env"
    assert config.inbox_ttl == 50


def test_unknown_key_in_config_file_is_an_error(tmp_path: Path) -> None:
    """A config file naming a setting that does not exist is refused."""
    path = tmp_path / "node.json"
    path.write_text(json.dumps({"kafka": "k:1", "kafak": "typo:1"}))
    with pytest.raises(ValueError, match="unknown settings: kafak"):
        NodeConfig.from_environment({"WSHA_CONFIG_FILE": str(path)})


def test_bad_number_in_environment_is_an_error() -> None:
    """A non-numeric value for a numeric setting raises ValueError."""
    with pytest.raises(ValueError):
        NodeConfig.from_environment({"WSHA_INBOX_TTL": "a week"})


def test_from_mapping_skips_none_values() -> None:
    """A None value leaves the field's default in place."""
    config = NodeConfig.from_mapping({"redis": None, "node_id": "n"})
    assert config.redis == NodeConfig.redis
    assert config.node_id == "n"


def test_default_node_ids_are_unique() -> None:
    """Two configs built without a node id get different ones."""
    assert NodeConfig().node_id != NodeConfig().node_id


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"heartbeat_interval": 0}, "heartbeat-interval must be positive"),
        ({"reaper_interval": -1}, "reaper-interval must be positive"),
        ({"heartbeat_ttl": 3.9, "heartbeat_interval": 2}, "at least twice"),
        ({"dead_topic_delay": -1}, "dead-topic-delay must not be negative"),
    ],
)
def test_check_refuses_registry_timings_that_cannot_work(
    overrides: dict[str, object], message: str
) -> None:
    """A heartbeat TTL under two intervals would expire a healthy node."""
    with pytest.raises(ValueError, match=message):
        good(**overrides).check()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"redis": "http://127.0.0.1:6379"}, "not a redis:// URL"),
        ({"redis": "sentinel://127.0.0.1:26379"}, "no master name"),
        ({"redis_timeout": 0}, "redis-timeout must be positive"),
        ({"redis_health_interval": 0}, "redis-health-interval must be positive"),
        ({"redis_reconnect_max": -1}, "redis-reconnect-max must be positive"),
        ({"accept_rate": -1}, "accept-rate must not be negative"),
        ({"accept_burst": 0}, "accept-burst must be at least 1"),
    ],
)
def test_check_refuses_redis_and_admission_settings_that_cannot_work(
    overrides: dict[str, object], message: str
) -> None:
    """A Redis URL that names nothing, timings of 0, and an admission gate that
    could never admit are refused before the node starts."""
    with pytest.raises(ValueError, match=message):
        good(**overrides).check()


def test_check_accepts_a_sentinel_url_and_no_admission_limit() -> None:
    """A sentinel:// URL and ``accept_rate`` 0 (no limit) are valid."""
    good(
        redis="sentinel://127.0.0.1:26379,127.0.0.1:26380/wsha/0", accept_rate=0
    ).check()


class ConfigFileShapeTests(SynchronousTestCase):
    """A config file that is JSON but not an object is refused clearly."""

    def test_non_object_file_is_a_value_error(self) -> None:
        """A list in the file raises ValueError naming the file, not a TypeError."""
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            f.write("[1, 2]")
            f.flush()
            with self.assertRaises(ValueError) as raised:
                NodeConfig.from_environment({"WSHA_CONFIG_FILE": f.name})
        self.assertIn("JSON object", str(raised.exception))


@pytest.mark.parametrize("label", ["", "v2 beta", "canary=10", "x" * 65])
def test_check_refuses_a_version_label_a_policy_cannot_name(label: str) -> None:
    """A version label must be 1-64 characters without spaces or ``=``, so that
    ``--canary LABEL=PERCENT`` can name it."""
    with pytest.raises(ValueError, match="version-label"):
        good(version_label=label).check()


def test_version_label_defaults_to_the_package_version() -> None:
    """Without a label a node registers the wsha version it runs."""
    from wsha import __version__

    assert NodeConfig().version_label == __version__
    good(version_label="2.0.0-rc1+blue").check()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"drain_grace": -1.0}, "drain-grace and drain-window must not be negative"),
        ({"drain_window": -1.0}, "drain-grace and drain-window must not be negative"),
        ({"drain_move_timeout": 0.0}, "drain-move-timeout must be positive"),
        ({"drain_timeout": 16.0}, "drain-timeout must be at least"),
    ],
)
def test_check_refuses_drain_settings_that_cannot_work(
    overrides: dict[str, object], message: str
) -> None:
    """A drain bound shorter than its grace, window and move timeout together
    (2 + 10 + 10 s by default), or a negative span, is refused at start."""
    with pytest.raises(ValueError, match=message):
        good(**overrides).check()


def test_check_accepts_a_drain_without_grace_or_window() -> None:
    """Telling every client at once, straight away, is allowed (one node, tests)."""
    good(drain_grace=0.0, drain_window=0.0, drain_timeout=10.0).check()
