"""The Kafka side of the node's metrics: errors, produce latency, consumer lag.

The ``thd_`` functions run in the bus's threads (librdkafka callbacks and
blocking watermark queries); prometheus_client's metrics may be updated from
any thread.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, TopicPartition

from wsha import metrics

OUTAGE = "outage"
CLIENT = "client"
DELIVERY = "delivery"
CONSUMER = "consumer"
DROPPED = "dropped"

NODE_TOPIC = "node"
BROADCAST_TOPIC = "broadcast"

OFFSET_INVALID = -1001
"""librdkafka's "no offset" (a partition not read from yet)."""


def count_error(kind: str) -> None:
    """Count one Kafka error of ``kind`` (``outage``, ``client``...)."""
    metrics.KAFKA_ERRORS.labels(kind).inc()


def thd_delivery_report(error: KafkaError | None, message: Any) -> None:
    """The producer's delivery report: time the record, or count its failure."""
    if error is not None:
        count_error(DELIVERY)
        return
    latency = message.latency()
    if latency is not None:
        metrics.KAFKA_DELIVERY.observe(latency)


def with_delivery_reports(config: dict[str, Any]) -> dict[str, Any]:
    """Producer settings that report each record's delivery to the metrics."""
    return {**config, "on_delivery": thd_delivery_report}


class ConsumerLag:
    """Measures how far the consumer is behind the end of its partitions.

    :param node_topic: the node's own topic (label ``node``); every other
        assigned topic is the broadcast topic (label ``broadcast``).
    :param timeout: seconds to wait for the broker's high watermarks.
    """

    def __init__(self, node_topic: str, timeout: float = 1.0):
        self.node_topic = node_topic
        self.timeout = timeout
        self._starts: dict[tuple[str, int], int] = {}

    def thd_assigned(self, partitions: list[TopicPartition]) -> None:
        """Remember where reading starts (positions are unknown until a read)."""
        self._starts = {(p.topic, p.partition): p.offset for p in partitions}

    def thd_measure(self, consumer: Any) -> dict[str, int]:
        """Set ``wsha_kafka_consumer_lag`` per topic; return the values set."""
        lags = {NODE_TOPIC: 0}
        for position in consumer.position(consumer.assignment()):
            _, high = consumer.get_watermark_offsets(
                TopicPartition(position.topic, position.partition),
                timeout=self.timeout,
            )
            offset = position.offset
            if offset < 0:
                offset = self._starts.get((position.topic, position.partition), high)
            label = NODE_TOPIC if position.topic == self.node_topic else BROADCAST_TOPIC
            lags[label] = lags.get(label, 0) + max(0, high - offset)
        for label, lag in lags.items():
            metrics.KAFKA_LAG.labels(label).set(lag)
        return lags
