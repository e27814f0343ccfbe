"""Counters and histograms for the per-message path, without locks.

prometheus_client's metrics take a lock on every update (a histogram
observation costs about 3 µs), which matters when every message is counted
and timed several times. These are updated and read on the reactor thread
only: every update happens there, and ``/metrics`` renders there too, so they
need no lock. They register in the default registry like any other metric.
Metrics updated from other threads (the Kafka client's callbacks) must stay
prometheus_client's own.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import REGISTRY
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class CounterChild:
    """One labelled series of a :class:`ReactorCounter`."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (1 by default)."""
        self.value += amount


class HistogramChild:
    """One labelled series of a :class:`ReactorHistogram`."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        """Count one observation of ``amount``."""
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


class ReactorCounter(Collector):
    """A labelled counter updated on the reactor thread only.

    :param name: the metric's name, without ``_total``.
    :param documentation: its help text.
    :param labelnames: its labels, in the order :meth:`labels` takes them.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]):
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self._children: dict[tuple[str, ...], CounterChild] = {}
        REGISTRY.register(self)

    def labels(self, *values: str) -> CounterChild:
        """The series of these label values (made on first use)."""
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}")
            child = self._children[values] = CounterChild()
        return child

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(
            self.name, self.documentation, labels=self.labelnames
        )

    def describe(self) -> Iterator[Metric]:
        """The metric, without samples."""
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        """Every series as it is now."""
        family = self._family()
        for values, child in self._children.items():
            family.add_metric(list(values), child.value, created=child.created)
        yield family


class ReactorHistogram(Collector):
    """A labelled histogram updated on the reactor thread only.

    :param name: the metric's name.
    :param documentation: its help text.
    :param labelnames: its labels, in the order :meth:`labels` takes them.
    :param buckets: the buckets' upper bounds, increasing (``+Inf`` is added).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
    ):
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.bounds = tuple(sorted(buckets))
        self._bucket_names = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        self._children: dict[tuple[str, ...], HistogramChild] = {}
        REGISTRY.register(self)

    def labels(self, *values: str) -> HistogramChild:
        """The series of these label values (made on first use)."""
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}")
            child = self._children[values] = HistogramChild(self.bounds)
        return child

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(
            self.name, self.documentation, labels=self.labelnames
        )

    def describe(self) -> Iterator[Metric]:
        """The metric, without samples."""
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        """Every series as it is now, buckets cumulative as Prometheus wants."""
        family = self._family()
        for values, child in self._children.items():
            cumulative = 0
            buckets = []
            for name, count in zip(self._bucket_names, child.counts, strict=True):
                cumulative += count
                buckets.append((name, float(cumulative)))
            family.add_metric(list(values), buckets, child.sum)
        yield family
