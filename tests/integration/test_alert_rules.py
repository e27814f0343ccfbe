"""The Prometheus alert rules (deploy/prometheus/) pass promtool, and name only
metrics that wsha exports; every exported metric is documented."""

from __future__ import annotations

import re
import shutil
import subprocess

from prometheus_client import REGISTRY

from tests.integration.conftest import REPO
from wsha import metrics

RULES = REPO / "deploy" / "prometheus" / "wsha-alerts.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "wsha-alerts.test.yml"
METRICS_DOC = REPO / "docs" / "metrics.md"

SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run Debian's promtool (installed by scripts/bootstrap) with ``args``."""
    found = shutil.which("promtool")
    assert found, "promtool not installed (run scripts/bootstrap)"
    return subprocess.run(
        [found, *args], capture_output=True, text=True, timeout=60, check=False
    )


def exported() -> set[str]:
    """The names of wsha's metric families (the node's gauges included)."""
    names = {family.name for family in REGISTRY.collect()}
    return {n for n in names if n.startswith("wsha_")} | set(metrics.NODE_GAUGES)


def family_of(sample: str) -> str:
    """The metric family a sample name belongs to."""
    for suffix in SUFFIXES:
        if sample.endswith(suffix):
            return sample[: -len(suffix)]
    return sample


def test_rules_pass_promtool_check() -> None:
    """``promtool check rules`` accepts the alert rules."""
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_pass_their_promtool_unit_tests() -> None:
    """``promtool test rules`` passes: each alert fires when and only where it
    should (deploy/prometheus/wsha-alerts.test.yml)."""
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_name_only_exported_metrics() -> None:
    """Every wsha metric an alert uses is one the nodes export."""
    used = {family_of(name) for name in re.findall(r"wsha_\w+", RULES.read_text())}
    assert used and used <= exported(), sorted(used - exported())


def test_every_metric_is_documented() -> None:
    """docs/metrics.md describes every wsha metric the nodes export."""
    documented = METRICS_DOC.read_text()
    missing = sorted(name for name in exported() if f"`{name}" not in documented)
    assert not missing, missing
