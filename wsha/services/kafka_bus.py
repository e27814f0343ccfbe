"""NodeBus: each node's Kafka topic, for notices between nodes.

The producer's ``produce`` only queues (it never waits on the network), so it is
called on the reactor thread; its delivery reports and the consumer's blocking
``poll`` are served by a thread pool of the service's own (``thd_`` methods),
and results come back to the reactor with ``callFromThread``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from twisted.application import service
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from wsha.services import kafka_metrics
from wsha.services.kafka_metrics import ConsumerLag
from wsha.topics import node_topic

NoticeHandler = Callable[[bytes], None]
HealthListener = Callable[[bool], None]

# Errors that mean the broker cannot be reached (as opposed to one bad message).
_OUTAGE_CODES = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT})


def producer_config(bootstrap: str) -> dict[str, Any]:
    """Producer settings tuned for latency: notices are tiny and urgent."""
    return {
        "bootstrap.servers": bootstrap,
        "linger.ms": 1,
        "acks": "1",
        "enable.idempotence": False,
        "queue.buffering.max.messages": 200_000,
        "message.timeout.ms": 30_000,
        "socket.nagle.disable": True,
    }


def within(d: Deferred[Any], seconds: float, reactor: Any) -> Deferred[Any]:
    """``d``, failed with Twisted's TimeoutError unless it fires within ``seconds``.

    ``d`` itself is left alone (a thread cannot be cancelled); only the wait ends.
    """
    waiter: Deferred[Any] = Deferred()

    def forward(result: Any) -> None:
        if not waiter.called:
            waiter.callback(result)

    d.addBoth(forward)
    return waiter.addTimeout(seconds, reactor)


def consumer_config(bootstrap: str, group: str) -> dict[str, Any]:
    """Consumer settings tuned for latency; offsets are not committed.

    A node reads its own topic from the end when it starts: the inbox, not the
    topic, holds what a restarted node's clients still need.
    """
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "fetch.wait.max.ms": 10,
        "fetch.min.bytes": 1,
        "fetch.queue.backoff.ms": 1,
        "socket.nagle.disable": True,
    }


class NodeBus(service.Service):
    """Sends notices to other nodes' topics and hands this node's notices over.

    :param reactor: the reactor, for threads and ``callFromThread``.
    :param bootstrap: Kafka bootstrap servers, ``host:port[,host:port]``.
    :param node_id: this node's id; it reads ``wsha.node.<node_id>``.
    :param on_notice: called on the reactor thread with each raw notice.
    :param start_wait: seconds ``startService`` waits for the broker; after that
        the node starts without it and keeps trying in the background.
    :param probe_interval: seconds between checks that a lost broker is back.
    :param broadcast_topic: the system broadcast topic, read in full too
        (from its end when the bus attaches); None reads none.
    :param on_broadcast: called on the reactor thread with each raw record of
        the broadcast topic.

    ``healthy`` says whether notices flow; ``on_health_change`` (set by the
    node) hears each change, so the node can fall back to polling inboxes
    while Kafka is away and catch up when it returns.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        bootstrap: str,
        node_id: str,
        on_notice: NoticeHandler,
        batch_size: int = 500,
        start_wait: float = 10.0,
        probe_interval: float = 2.0,
        broadcast_topic: str | None = None,
        on_broadcast: NoticeHandler | None = None,
    ):
        self._reactor = reactor
        self._bootstrap = bootstrap
        self.node_id = node_id
        self.topic = node_topic(node_id)
        self._on_notice = on_notice
        self._batch_size = batch_size
        self._pool = ThreadPool(minthreads=2, maxthreads=3, name="wsha-kafka")
        # Daemon threads: one stuck in librdkafka must not keep a stopped
        # node's process alive (the wait for it is bounded, never the reactor's).
        self._pool.threadFactory = partial(threading.Thread, daemon=True)  # type: ignore[assignment]
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None
        self._running = False
        self._loops: list[Deferred[None]] = []
        self._start_wait = start_wait
        self._probe_interval = probe_interval
        self.healthy = False
        self.on_health_change: HealthListener | None = None
        self.broadcast_topic = broadcast_topic
        self._on_broadcast = on_broadcast
        self._lag = ConsumerLag(self.topic)

    @inlineCallbacks
    def startService(self) -> Any:
        """Start the producer, then attach to this node's topic.

        Waits up to ``start_wait`` for the broker; a node whose Kafka is down
        still starts (its inboxes work) and attaches once the broker is back.
        """
        service.Service.startService(self)
        self._pool.start()
        self._running = True
        self._producer = Producer(
            self._with_errors(
                kafka_metrics.with_delivery_reports(producer_config(self._bootstrap))
            )
        )
        attached = self._attach_loop()
        self._loops = [attached, self._report_loop(), self._probe_loop()]
        try:
            yield within(attached, self._start_wait, self._reactor)
        except DeferredTimeout:
            self.log.warn(
                "Kafka at {bootstrap} not reachable; starting without it",
                bootstrap=self._bootstrap,
            )

    @inlineCallbacks
    def _attach_loop(self) -> Any:
        # Topic and consumer, retried until they work or the service stops.
        delay = 0.5
        while self._running and self._consumer is None:
            try:
                yield self._in_thread(self.thd_create_topic)
                self._consumer = yield self._in_thread(self.thd_open_consumer)
            except Exception as e:
                self.log.warn(
                    "Attaching to {topic} failed, retrying in {delay}s: {error}",
                    topic=self.topic,
                    delay=delay,
                    error=str(e),
                )
                yield deferLater(self._reactor, delay, lambda: None)
                delay = min(delay * 2, 10.0)
        if self._consumer is not None:
            self.log.info(
                "Reading notices from {topic} and broadcasts from {broadcasts}",
                topic=self.topic,
                broadcasts=self.broadcast_topic,
            )
            self._set_healthy(True)
            self._loops.append(self._poll_loop())

    def _with_errors(self, config: dict[str, Any]) -> dict[str, Any]:
        # librdkafka calls error_cb on the thread that polls; hop to the reactor.
        def on_error(error: KafkaError) -> None:
            self._reactor.callFromThread(self._kafka_error, error)

        return {**config, "error_cb": on_error}

    def _kafka_error(self, error: KafkaError) -> None:
        if error.code() in _OUTAGE_CODES:
            kafka_metrics.count_error(kafka_metrics.OUTAGE)
            self._set_healthy(False, str(error))
        else:
            kafka_metrics.count_error(kafka_metrics.CLIENT)
            self.log.warn("Kafka error: {error}", error=str(error))

    def _set_healthy(self, healthy: bool, why: str = "") -> None:
        if healthy == self.healthy:
            return
        self.healthy = healthy
        if healthy:
            self.log.info(
                "Kafka reachable: notices flow through {topic}", topic=self.topic
            )
        else:
            self.log.warn("Kafka unreachable: {why}", why=why)
        if self.on_health_change is not None:
            self.on_health_change(healthy)

    @inlineCallbacks
    def _probe_loop(self) -> Any:
        # While unhealthy after attaching, ask the broker for metadata until it
        # answers; while healthy, measure the consumer's lag (for the metrics).
        while self._running:
            yield deferLater(self._reactor, self._probe_interval, lambda: None)
            if self._consumer is None or not self._running:
                continue
            if self.healthy:
                try:
                    yield self._in_thread(self._lag.thd_measure, self._consumer)
                except Exception as e:
                    self.log.debug("Kafka lag not measured: {error}", error=str(e))
                continue
            try:
                yield self._in_thread(self.thd_probe)
            except Exception as e:
                self.log.debug("Kafka still unreachable: {error}", error=str(e))
                continue
            self._set_healthy(True)

    def thd_probe(self) -> None:
        """Fetch this node's topic metadata; raises if the broker does not answer."""
        assert self._producer is not None
        metadata = self._producer.list_topics(self.topic, timeout=self._probe_interval)
        if not metadata.brokers:
            raise ConnectionError("no broker in the metadata")

    @inlineCallbacks
    def stopService(self) -> Any:
        """Stop polling, flush what is queued and close the clients, then the pool."""
        service.Service.stopService(self)
        self._running = False
        try:
            yield within(
                gatherResults(self._loops, consumeErrors=True), 15.0, self._reactor
            )
            if self._producer is not None:
                left = yield self._in_thread(self._producer.flush, 5.0)
                if left:
                    self.log.warn("{count} notices unsent at shutdown", count=left)
            if self._consumer is not None:
                yield within(self._in_thread(self._consumer.close), 10.0, self._reactor)
        except DeferredTimeout:
            # Joining a thread stuck in librdkafka would freeze the reactor, so
            # the pool is left to die with the process.
            self.log.warn("Kafka clients did not close in time; leaving them")
            return
        self._pool.stop()

    def flush(self, timeout: float) -> Deferred[int]:
        """Send what the producer holds, waiting ``timeout`` seconds at most.

        Fires with how many records are still unsent (0: all went), or fails
        with Twisted's TimeoutError if librdkafka does not return in time.
        The flush runs in the bus's threads, never on the reactor.
        """
        if self._producer is None:
            return succeed(0)
        return within(
            self._in_thread(self._producer.flush, timeout), timeout + 1.0, self._reactor
        )

    def send(self, node_id: str, notice: bytes, key: bytes | None = None) -> None:
        """Queue ``notice`` for the topic of ``node_id``; never blocks.

        Delivery is best effort by design: a lost notice only delays a pull
        from the inbox, which holds the message itself.
        """
        if self._producer is None:
            kafka_metrics.count_error(kafka_metrics.DROPPED)
            self.log.warn("Notice to {node} dropped: bus not started", node=node_id)
            return
        try:
            self._producer.produce(node_topic(node_id), notice, key=key)
        except BufferError:
            kafka_metrics.count_error(kafka_metrics.DROPPED)
            self.log.warn("Notice to {node} dropped: producer queue full", node=node_id)

    def publish_broadcast(self, record: bytes) -> None:
        """Queue a broadcast record for the broadcast topic; never blocks.

        Best effort, like notices: a record lost here is found in the
        broadcast history by every node's feed.
        """
        if self._producer is None or self.broadcast_topic is None:
            kafka_metrics.count_error(kafka_metrics.DROPPED)
            self.log.warn("Broadcast record dropped: bus not started")
            return
        try:
            # One key: every record on one partition, in the order sent.
            self._producer.produce(self.broadcast_topic, record, key=b"broadcast")
        except BufferError:
            kafka_metrics.count_error(kafka_metrics.DROPPED)
            self.log.warn("Broadcast record dropped: producer queue full")

    def _in_thread(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def thd_create_topic(self) -> None:
        """Create this node's single-partition topic, and the broadcast topic,
        if they do not exist yet."""
        admin = AdminClient({"bootstrap.servers": self._bootstrap})
        names = [self.topic]
        if self.broadcast_topic is not None:
            names.append(self.broadcast_topic)
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=1, replication_factor=1) for name in names],
            operation_timeout=10,
            request_timeout=15,
        )
        for future in futures.values():
            try:
                future.result(timeout=20)
            except Exception as e:
                error = e.args[0] if e.args else None
                if (
                    getattr(error, "code", lambda: None)()
                    != KafkaError.TOPIC_ALREADY_EXISTS
                ):
                    raise

    def delete_topic(self, node_id: str) -> Deferred[Any]:
        """Delete a dead node's topic in the bus's threads; fires once it is gone."""
        return self._in_thread(self.thd_delete_topic, node_topic(node_id))

    def thd_delete_topic(self, topic: str) -> None:
        """Delete ``topic``; one that does not exist counts as deleted."""
        admin = AdminClient({"bootstrap.servers": self._bootstrap})
        deleted = admin.delete_topics([topic], operation_timeout=10, request_timeout=15)
        try:
            deleted[topic].result(timeout=20)
        except KafkaException as e:
            if e.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise

    def thd_open_consumer(self) -> Consumer:
        """Open the consumer positioned at the current end of this node's topic
        and of every partition of the broadcast topic.

        The ends are read as explicit offsets so that every record sent after
        this call returns is seen, with no lazy offset reset racing it.
        """
        consumer = Consumer(
            self._with_errors(
                consumer_config(self._bootstrap, f"wsha-node-{self.node_id}")
            )
        )
        try:
            partitions = [TopicPartition(self.topic, 0)]
            if self.broadcast_topic is not None:
                metadata = consumer.list_topics(self.broadcast_topic, timeout=10)
                found = metadata.topics[self.broadcast_topic].partitions
                if not found:
                    raise KafkaException(f"{self.broadcast_topic} has no partitions")
                partitions += [TopicPartition(self.broadcast_topic, p) for p in found]
            for partition in partitions:
                _, partition.offset = consumer.get_watermark_offsets(
                    partition, timeout=10
                )
            self._lag.thd_assigned(partitions)
            consumer.assign(partitions)
        except Exception:
            consumer.close()
            raise
        return consumer

    def thd_poll(self) -> list[tuple[str, bytes]]:
        """Wait up to 200 ms for a notice, then take whatever else is queued.

        ``consume(n, timeout)`` only returns once ``n`` messages arrived or the
        timeout passed, which would hold every notice for up to 200 ms at low
        rates; waiting for the first one alone returns as soon as it comes.
        """
        assert self._consumer is not None
        first = self._consumer.poll(0.2)
        if first is None:
            return []
        messages = [first, *self._consumer.consume(self._batch_size - 1, 0)]
        payloads = []
        for message in messages:
            error = message.error()
            if error is None:
                value = message.value()
                if value is not None:
                    payloads.append((message.topic() or "", value))
            elif error.code() != KafkaError._PARTITION_EOF:
                kafka_metrics.count_error(kafka_metrics.CONSUMER)
                self.log.warn("Kafka consumer error: {error}", error=str(error))
        if payloads:
            self._reactor.callFromThread(self._set_healthy, True)
        return payloads

    @inlineCallbacks
    def _poll_loop(self) -> Any:
        while self._running:
            try:
                payloads = yield self._in_thread(self.thd_poll)
            except Exception:
                self.log.failure("Polling {topic} failed", topic=self.topic)
                # A consumer that fails at once would otherwise spin a core.
                yield deferLater(self._reactor, 1.0, lambda: None)
                continue
            for topic, payload in payloads:
                try:
                    if topic == self.broadcast_topic and self._on_broadcast:
                        self._on_broadcast(payload)
                    else:
                        self._on_notice(payload)
                except Exception:
                    self.log.failure("Handling a record of {topic} failed", topic=topic)

    @inlineCallbacks
    def _report_loop(self) -> Any:
        # Serves the producer's delivery reports and error callbacks.
        while self._running:
            try:
                yield self._in_thread(self._producer.poll, 0.2)  # type: ignore[union-attr]
            except Exception:
                self.log.failure("Serving producer reports failed")
