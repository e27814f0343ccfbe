"""Unit tests for :mod:`wsha.tap`: the twistd plugin's options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from twisted.python import usage

from wsha.tap import Options


def parse(*argv: str) -> Options:
    """Parse ``argv`` as ``twistd wsha`` would."""
    options = Options()
    options.parseOptions(list(argv))
    return options


def test_command_line_beats_environment(clean_env: pytest.MonkeyPatch) -> None:
    """An option given on the command line wins over its WSHA_ variable."""
    clean_env.setenv("WSHA_JWT_SECRET", "env-secret")
    clean_env.setenv("WSHA_NODE_ID", "env-node")
    clean_env.setenv("WSHA_KAFKA", "env:9092")

    config = parse("--node-id", "cli-node", "--max-body-bytes", "1000")["config"]

    assert config.node_id == "cli-node"
    assert config.jwt_secret == "env-secret"
    assert config.kafka == "env:9092"
    assert config.max_body_bytes == 1000


def test_config_file_feeds_the_options(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Settings from WSHA_CONFIG_FILE are used when nothing overrides them."""
    path = tmp_path / "node.json"
    path.write_text(json.dumps({"jwt_secret": "file-secret", "redis": "redis://h:1/2"}))
    clean_env.setenv("WSHA_CONFIG_FILE", str(path))

    config = parse("--port", "tcp:9000")["config"]

    assert (config.jwt_secret, config.redis, config.port) == (
        "file-secret",
        "redis://h:1/2",
        "tcp:9000",
    )


def test_missing_secret_is_a_usage_error(clean_env: pytest.MonkeyPatch) -> None:
    """Without a JWT key anywhere, parsing fails with a UsageError naming it."""
    with pytest.raises(usage.UsageError, match="JWT key"):
        parse()


def test_inconsistent_limits_are_a_usage_error(clean_env: pytest.MonkeyPatch) -> None:
    """A body limit not below the message limit is a UsageError."""
    with pytest.raises(usage.UsageError, match="max-body-bytes"):
        parse(
            "--jwt-secret", "s", "--max-body-bytes", "10", "--max-message-bytes", "10"
        )


def test_non_numeric_option_is_a_usage_error(clean_env: pytest.MonkeyPatch) -> None:
    """A numeric option given a word is refused by its coercion."""
    with pytest.raises(usage.UsageError):
        parse("--jwt-secret", "s", "--inbox-ttl", "forever")


@pytest.mark.parametrize(
    ("name", "value"),
    [("WSHA_INBOX_TTL", "forever"), ("WSHA_CONFIG_FILE", "/nonexistent/wsha.json")],
)
def test_bad_environment_is_a_usage_error(
    clean_env: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """A bad WSHA_ variable or missing config file is a UsageError, not a traceback."""
    clean_env.setenv("WSHA_JWT_SECRET", "s")
    clean_env.setenv(name, value)
    with pytest.raises(usage.UsageError):
        parse()


def test_unknown_key_in_config_file_is_a_usage_error(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A config file with an unknown setting is a UsageError naming it."""
    path = tmp_path / "node.json"
    path.write_text(json.dumps({"jwt_secret": "s", "colour": "blue"}))
    clean_env.setenv("WSHA_CONFIG_FILE", str(path))
    with pytest.raises(usage.UsageError, match="colour"):
        parse()
