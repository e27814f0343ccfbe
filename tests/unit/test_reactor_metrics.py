"""Unit tests for :mod:`wsha.reactor_metrics`: lock-free counters and
histograms render as Prometheus expects."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from wsha.reactor_metrics import ReactorCounter, ReactorHistogram


@pytest.fixture
def histogram() -> Iterator[ReactorHistogram]:
    """A histogram with buckets 0.1, 1 and 10, unregistered after the test."""
    made = ReactorHistogram("test_reactor_seconds", "A test.", ["kind"], [1, 0.1, 10])
    yield made
    REGISTRY.unregister(made)


def test_histogram_buckets_are_cumulative(histogram: ReactorHistogram) -> None:
    """Observations land in the first bucket whose bound holds them (a value
    equal to a bound included); buckets, count and sum come out cumulative."""
    child = histogram.labels("a")
    for value in (0.05, 0.1, 0.5, 3.0, 20.0):
        child.observe(value)
    (family,) = list(histogram.collect())
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[("test_reactor_seconds_bucket", "0.1")] == 2
    assert samples[("test_reactor_seconds_bucket", "1.0")] == 3
    assert samples[("test_reactor_seconds_bucket", "10.0")] == 4
    assert samples[("test_reactor_seconds_bucket", "+Inf")] == 5
    assert samples[("test_reactor_seconds_count", None)] == 5
    assert samples[("test_reactor_seconds_sum", None)] == pytest.approx(23.65)
    assert REGISTRY.get_sample_value("test_reactor_seconds_count", {"kind": "a"}) == 5


def test_counter_renders_with_total_and_checks_labels() -> None:
    """A counter's series render as ``_total`` samples; the wrong number of
    label values is refused."""
    counter = ReactorCounter("test_reactor_things", "Things.", ["a", "b"])
    try:
        counter.labels("x", "y").inc()
        counter.labels("x", "y").inc(2)
        with pytest.raises(ValueError):
            counter.labels("x")
        text = generate_latest(REGISTRY).decode()
        (family,) = [
            f
            for f in text_string_to_metric_families(text)
            if f.name == "test_reactor_things"
        ]
        assert family.type == "counter"
        totals = [s for s in family.samples if s.name.endswith("_total")]
        assert [(s.labels, s.value) for s in totals] == [({"a": "x", "b": "y"}, 3.0)]
    finally:
        REGISTRY.unregister(counter)
