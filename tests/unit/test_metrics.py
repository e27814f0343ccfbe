"""Unit tests for :mod:`wsha.metrics` and the Redis and Kafka measurements."""

from __future__ import annotations

import gzip
from types import SimpleNamespace
from typing import Any

import txredisapi
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from tests.unit.metric_values import Delta, value
from tests.unit.test_redis_service import FakeTarget
from wsha import metrics
from wsha.services import kafka_metrics
from wsha.services.kafka_metrics import ConsumerLag
from wsha.services.redis_service import RedisService, RedisUnavailable


def render(request: DummyRequest) -> bytes:
    """Render ``/metrics`` for ``request``; return the body."""
    body = metrics.MetricsPage().render_GET(request)
    assert isinstance(body, bytes)
    return body


class MetricsPageTests(SynchronousTestCase):
    """``GET /metrics``: text format, OpenMetrics, a subset, gzip."""

    def test_text_format_by_default(self) -> None:
        """Without an Accept header the answer is Prometheus' text format."""
        request = DummyRequest([b""])
        text = render(request).decode()
        self.assertIn("# TYPE wsha_messages_in_total counter", text)
        self.assertTrue(
            request.responseHeaders.getRawHeaders(b"content-type")[0].startswith(
                b"text/plain"
            )
        )

    def test_openmetrics_when_asked(self) -> None:
        """``Accept: application/openmetrics-text`` gets OpenMetrics."""
        request = DummyRequest([b""])
        request.requestHeaders.setRawHeaders(
            b"accept", [b"application/openmetrics-text; version=1.0.0"]
        )
        self.assertTrue(render(request).endswith(b"# EOF\n"))

    def test_names_restrict_and_gzip_compresses(self) -> None:
        """``name[]`` limits the answer to those metrics; gzip is honoured."""
        request = DummyRequest([b""])
        request.args = {b"name[]": [b"wsha_takeovers_total"]}
        request.requestHeaders.setRawHeaders(b"accept-encoding", [b"gzip, br"])
        text = gzip.decompress(render(request)).decode()
        names = {f.name for f in text_string_to_metric_families(text)}
        self.assertEqual(names, {"wsha_takeovers"})


class NodeCollectorTests(SynchronousTestCase):
    """The node's state, sessions and links are read when scraped."""

    def test_node_gauges_follow_the_node(self) -> None:
        """The state gauge is 1 for the current state only; the others read
        the node at scrape time."""
        state = ["ready"]
        metrics.watch_node(
            "n-1", lambda: state[0], lambda: 12, lambda: True, lambda: False
        )
        self.assertEqual(value("wsha_node_state", state="ready"), 1)
        self.assertEqual(value("wsha_node_state", state="draining"), 0)
        self.assertEqual(value("wsha_sessions"), 12)
        self.assertEqual(value("wsha_redis_available"), 1)
        self.assertEqual(value("wsha_kafka_healthy"), 0)
        self.assertEqual(value("wsha_node_info", node="n-1", version="0.1.0"), 1)
        state[0] = "draining"
        self.assertEqual(value("wsha_node_state", state="ready"), 0)
        self.assertEqual(value("wsha_node_state", state="draining"), 1)

    def test_close_code_labels_are_bounded(self) -> None:
        """Codes the protocol knows are labels; any other is ``other``."""
        self.assertEqual(metrics.close_code(4001), "4001")
        self.assertEqual(metrics.close_code(3333), "other")
        self.assertEqual(metrics.close_code(None), "none")

    def test_drains_counter_is_there_for_the_drain(self) -> None:
        """``DRAINS.inc()`` counts one drain."""
        drains = Delta("wsha_drains_total")
        metrics.DRAINS.inc()
        self.assertEqual(drains(), 1)


class RedisMetricsTests(SynchronousTestCase):
    """Every command of the node's Redis connection is timed and its failures
    counted by kind."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.target = FakeTarget()
        self.redis = RedisService(self.target, self.clock, timeout=2.0)
        self.redis.startService()
        assert self.target.watcher is not None
        self.target.watcher.link_up(object())
        self.connection = self.target.connection

    def tearDown(self) -> None:
        self.successResultOf(self.redis.stopService())

    def test_reply_is_timed_by_command(self) -> None:
        """A command answered after 30 ms is observed under its name."""
        timed = Delta("wsha_redis_command_seconds_count", command="XRANGE")
        total = Delta("wsha_redis_command_seconds_sum", command="XRANGE")
        d = self.redis.execute_command("XRANGE", "k", "-", "+")
        self.clock.advance(0.03)
        self.connection.commands[0][1].callback([])
        self.successResultOf(d)
        self.assertEqual(timed(), 1)
        self.assertAlmostEqual(total(), 0.03)

    def test_scripts_are_named_by_their_file(self) -> None:
        """A wsha script is labelled ``<name>.lua``; a timeout counts as such."""
        from wsha.sessions import SessionRegistry

        timeouts = Delta("wsha_redis_errors_total", command="ack.lua", kind="timeout")
        d = self.redis.eval(SessionRegistry._ack_script, ["k"], [1])
        self.clock.advance(2.1)
        self.failureResultOf(d, RedisUnavailable)
        self.assertEqual(timeouts(), 1)

    def test_error_kinds(self) -> None:
        """A READONLY reply counts as ``reply``, a script error as ``other``,
        a command refused while Redis is down as ``unavailable``."""
        reply = Delta("wsha_redis_errors_total", command="SET", kind="reply")
        other = Delta("wsha_redis_errors_total", command="SET", kind="other")
        down = Delta("wsha_redis_errors_total", command="GET", kind="unavailable")
        first = self.redis.execute_command("SET", "k", "v")
        second = self.redis.execute_command("SET", "k", "v")
        self.connection.commands[0][1].errback(txredisapi.ResponseError("READONLY no"))
        self.connection.commands[1][1].errback(txredisapi.ResponseError("ERR bad"))
        self.failureResultOf(first, RedisUnavailable)
        self.failureResultOf(second)
        assert self.target.watcher is not None
        self.target.watcher.link_down(object())
        self.failureResultOf(self.redis.execute_command("GET", "k"), RedisUnavailable)
        self.assertEqual((reply(), other(), down()), (1, 1, 1))


class FakeConsumer:
    """A confluent-kafka consumer with positions and high watermarks by hand."""

    def __init__(self, positions: dict[tuple[str, int], int], highs: dict[str, int]):
        self.positions = positions
        self.highs = highs

    def assignment(self) -> list[Any]:
        """The assigned partitions."""
        return [SimpleNamespace(topic=t, partition=p) for t, p in self.positions]

    def position(self, partitions: list[Any]) -> list[Any]:
        """Each partition with its position (-1001 before any read)."""
        return [
            SimpleNamespace(
                topic=p.topic,
                partition=p.partition,
                offset=self.positions[(p.topic, p.partition)],
            )
            for p in partitions
        ]

    def get_watermark_offsets(self, partition: Any, timeout: float) -> tuple[int, int]:
        """(low, high) of ``partition``."""
        return 0, self.highs[partition.topic]


class KafkaMetricsTests(SynchronousTestCase):
    """Consumer lag per topic, delivery reports and error kinds."""

    def test_lag_is_high_watermark_minus_position(self) -> None:
        """The node topic is 5 behind; the broadcast topic, not read yet since
        it was assigned at 40, is 2 behind its high watermark of 42."""
        lag = ConsumerLag("wsha.node.n1")
        lag.thd_assigned(
            [SimpleNamespace(topic="wsha.broadcast", partition=0, offset=40)]
        )  # type: ignore[list-item]
        consumer = FakeConsumer(
            {("wsha.node.n1", 0): 10, ("wsha.broadcast", 0): -1001},
            {"wsha.node.n1": 15, "wsha.broadcast": 42},
        )
        self.assertEqual(lag.thd_measure(consumer), {"node": 5, "broadcast": 2})
        self.assertEqual(value("wsha_kafka_consumer_lag", topic="node"), 5)
        self.assertEqual(value("wsha_kafka_consumer_lag", topic="broadcast"), 2)

    def test_delivery_reports(self) -> None:
        """A delivered record is timed by librdkafka's latency; a failed one
        counts as a delivery error."""
        timed = Delta("wsha_kafka_delivery_seconds_count")
        failed = Delta("wsha_kafka_errors_total", kind="delivery")
        kafka_metrics.thd_delivery_report(None, SimpleNamespace(latency=lambda: 0.004))
        kafka_metrics.thd_delivery_report(object(), None)  # type: ignore[arg-type]
        self.assertEqual((timed(), failed()), (1, 1))
