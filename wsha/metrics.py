"""The node's Prometheus metrics, defined in one place (served at ``/metrics``).

They live in prometheus_client's default registry: one node is one process.
Those updated for every message or Redis command are reactor-thread metrics
without locks (:mod:`wsha.reactor_metrics`); the rest are prometheus_client's.
Every metric is described in docs/metrics.md; label values come from the
constants below, never from user, session or group ids, so that the number
of series stays small and fixed.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.web import resource
from twisted.web.iweb import IRequest

from wsha import __version__, wire
from wsha.reactor_metrics import ReactorCounter, ReactorHistogram

# Message classes (the ``class`` label).
DIRECT = "direct"
GROUP = "group"
BROADCAST = "broadcast"
MARKET = "market"

# Where a message came in (``route`` of wsha_messages_in_total).
FROM_WEBSOCKET = "websocket"
FROM_CONTROL = "control"

# How a message reached the connection (``route`` of wsha_messages_out_total).
ROUTE_REPLAY = "replay"
"""Read from the inbox right after the session opened (its backlog)."""
ROUTE_LOCAL = "local"
"""Read after a send on this same node (no Kafka involved)."""
ROUTE_KAFKA = "kafka"
"""Read after a notice on this node's Kafka topic, or a live broadcast record."""
ROUTE_SWEEP = "sweep"
"""Read by the safety sweep (or the catch-up after a Redis outage)."""
ROUTE_PUBSUB = "pubsub"
"""A group message handed over live from the group's Pub/Sub channel."""
ROUTE_HISTORY = "history"
"""Read from a group or broadcast history (subscribe, restore, gaps)."""
ROUTE_SNAPSHOT = "snapshot"
"""A market data snapshot sent on subscribe."""
ROUTE_LIVE = "live"
"""A live market data tick."""

# Whether a delivered message was accepted while its connection was open.
LIVE = "live"
BACKLOG = "backlog"

KNOWN_CLOSE_CODES = frozenset(
    {
        wire.CLOSE_NORMAL,
        wire.CLOSE_GOING_AWAY,
        1002,
        1003,
        1005,
        1006,
        1007,
        wire.CLOSE_POLICY,
        wire.CLOSE_TOO_BIG,
        wire.CLOSE_SERVER_ERROR,
        wire.CLOSE_RESTARTING,
        wire.CLOSE_TRY_LATER,
        wire.CLOSE_TAKEN_OVER,
        wire.CLOSE_TOO_SLOW,
        wire.CLOSE_TOO_MANY_SESSIONS,
        wire.CLOSE_UNAUTHORIZED,
    }
)
"""Close codes counted by their number; a client's own code counts as ``other``."""

LATENCY_BUCKETS = (
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    3600.0,
)
"""Seconds, from a few ms (live delivery) to an hour (a backlog after a day off)."""

STORE_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
"""Seconds for one Redis command or one Kafka produce (loopback to timeout)."""


# Connections and sessions

CONNECTIONS = Gauge(
    "wsha_connections", "WebSocket connections open on this node (handshake done)."
)
CONNECTIONS_OPENED = Counter(
    "wsha_connections_opened", "WebSocket connections opened (handshake done)."
)
CONNECTIONS_REFUSED = Counter(
    "wsha_connections_refused",
    "Connections closed right after opening, by close code (draining, store "
    "down, rate limit, bad token, bad request).",
    ["code"],
)
CONNECTIONS_CLOSED = Counter(
    "wsha_connections_closed",
    "WebSocket connections closed, by close code and by who closed "
    "(client, server, or network: dropped without a close frame).",
    ["code", "by"],
)
RESUMES = Counter(
    "wsha_resumes",
    "Sessions opened, by stream class and outcome: fresh (nothing to resume), "
    "honoured (resumed exactly), truncated (messages after the resume point "
    "were trimmed or expired).",
    ["class", "outcome"],
)
REPLAYED = Counter(
    "wsha_replayed",
    "Inbox messages waiting for sessions when they opened (their backlog).",
)
TAKEOVERS = Counter(
    "wsha_takeovers",
    "Connections closed with 4001 because a newer one of the session claimed it.",
)
DRAINS = Counter("wsha_drains", "Drains of this node begun.")

# Messages

MESSAGES_IN = ReactorCounter(
    "wsha_messages_in",
    "Messages accepted (stored), by class and where they came in; "
    "duplicates not included.",
    ["class", "route"],
)
DUPLICATES = ReactorCounter(
    "wsha_duplicates_suppressed",
    "Sends that repeated a client id already stored (retries), answered with "
    "the original id and not stored again.",
    ["class", "route"],
)
MESSAGES_OUT = ReactorCounter(
    "wsha_messages_out",
    "Messages written to client connections, by class and how they got there.",
    ["class", "route"],
)
DELIVERY_WRITE = ReactorHistogram(
    "wsha_delivery_write_seconds",
    "Seconds from a message's acceptance to its write on a client connection; "
    "'when' says whether it was accepted while that connection was open.",
    ["class", "when"],
    LATENCY_BUCKETS,
)
DELIVERY_ACK = ReactorHistogram(
    "wsha_delivery_ack_seconds",
    "Seconds from a message's acceptance to the client's own ack of it on the "
    "connection it was written to.",
    ["class", "when"],
    LATENCY_BUCKETS,
)
DELIVERY_UNTRACKED = Counter(
    "wsha_delivery_untracked",
    "Messages written but never timed to an ack: the per-connection record "
    "overflowed, or the connection (or subscription) ended first.",
    ["class", "reason"],
)

# Redis and Kafka

REDIS_COMMANDS = ReactorHistogram(
    "wsha_redis_command_seconds",
    "Seconds from sending a command (or script) on the node's Redis "
    "connection to its reply, error or timeout.",
    ["command"],
    STORE_BUCKETS,
)
REDIS_ERRORS = Counter(
    "wsha_redis_errors",
    "Redis commands that failed, by command and kind: unavailable (refused at "
    "once, Redis known down), timeout, connection, reply (READONLY, LOADING...), "
    "other.",
    ["command", "kind"],
)
KAFKA_ERRORS = Counter(
    "wsha_kafka_errors",
    "Kafka errors, by kind: outage (brokers unreachable), client (other client "
    "errors), delivery (a record the broker never took), consumer (a bad "
    "fetch), dropped (producer queue full or not started).",
    ["kind"],
)
KAFKA_DELIVERY = Histogram(
    "wsha_kafka_delivery_seconds",
    "Seconds from queueing a record with the producer to the broker's ack.",
    buckets=STORE_BUCKETS,
)
KAFKA_LAG = Gauge(
    "wsha_kafka_consumer_lag",
    "Records on this node's topics not read yet (high watermark minus "
    "position), by topic: node (its notices) or broadcast.",
    ["topic"],
)

# Existing consistency checks

CONSISTENCY_CHECKS = Counter(
    "wsha_consistency_checks",
    "Consistency checks run by this node, by scope (local or cluster).",
    ["scope"],
)
CONSISTENCY_REPAIRS = Counter(
    "wsha_consistency_repairs",
    "Drift found and repaired by the consistency checker, by kind.",
    ["kind"],
)
GROUP_CHANNELS = Gauge(
    "wsha_group_channels",
    "Group Pub/Sub channels this node is subscribed to.",
)


def stored(kind: str, route: str, duplicate: bool) -> None:
    """Count one message stored in ``kind``'s stream, or one duplicate of one."""
    (DUPLICATES if duplicate else MESSAGES_IN).labels(kind, route).inc()


_MARKET_SNAPSHOTS = MESSAGES_OUT.labels(MARKET, ROUTE_SNAPSHOT)
_MARKET_TICKS = MESSAGES_OUT.labels(MARKET, ROUTE_LIVE)


def market_sent(snapshot: bool) -> None:
    """Count one market data frame written to a connection."""
    (_MARKET_SNAPSHOTS if snapshot else _MARKET_TICKS).inc()


def close_code(code: int | None) -> str:
    """The ``code`` label of a close code: its number if wsha knows it."""
    if code is None:
        return "none"
    return str(code) if code in KNOWN_CLOSE_CODES else "other"


NODE_GAUGES = (
    "wsha_node_info",
    "wsha_node_state",
    "wsha_sessions",
    "wsha_redis_available",
    "wsha_kafka_healthy",
)
"""The gauges :class:`NodeCollector` reads from the node at each scrape."""


class NodeCollector(Collector):
    """Gauges read from the node when scraped: its state, sessions and links.

    The node says what to read with :func:`watch_node`; before that (or in a
    process that runs no node) nothing is reported.
    """

    STATES = ("starting", "ready", "draining")

    def __init__(self) -> None:
        self.node_id = ""
        self.state: Callable[[], str] | None = None
        self.sessions: Callable[[], int] | None = None
        self.redis_available: Callable[[], bool] | None = None
        self.kafka_healthy: Callable[[], bool] | None = None

    def describe(self) -> Iterator[Metric]:
        """The gauges this collector reports (without values)."""
        for name in NODE_GAUGES:
            yield GaugeMetricFamily(name, name)

    def collect(self) -> Iterator[Metric]:
        """The node's gauges as they are now."""
        if self.state is None:
            return
        info = GaugeMetricFamily(
            "wsha_node_info",
            "The node's id and version (always 1).",
            None,
            ["node", "version"],
        )
        info.add_metric([self.node_id, __version__], 1)
        yield info
        current = self.state()
        states = GaugeMetricFamily(
            "wsha_node_state",
            "1 for the state the node is in (starting, ready, draining), else 0.",
            labels=["state"],
        )
        for state in dict.fromkeys((*self.STATES, current)):
            states.add_metric([state], 1 if state == current else 0)
        yield states
        for name, text, read in (
            ("wsha_sessions", "Sessions live on this node.", self.sessions),
            (
                "wsha_redis_available",
                "1 while the node's Redis connection is up and answers.",
                self.redis_available,
            ),
            (
                "wsha_kafka_healthy",
                "1 while the node reads its Kafka topic (notices flow).",
                self.kafka_healthy,
            ),
        ):
            if read is not None:
                yield GaugeMetricFamily(name, text, value=float(read()))


NODE = NodeCollector()
REGISTRY.register(NODE)


def watch_node(
    node_id: str,
    state: Callable[[], str],
    sessions: Callable[[], int],
    redis_available: Callable[[], bool],
    kafka_healthy: Callable[[], bool],
) -> None:
    """Report the node's state, live sessions and link health at every scrape."""
    NODE.node_id = node_id
    NODE.state = state
    NODE.sessions = sessions
    NODE.redis_available = redis_available
    NODE.kafka_healthy = kafka_healthy


class MetricsPage(resource.Resource):
    """``GET /metrics``: every metric in Prometheus' text format.

    OpenMetrics is served when the ``Accept`` header asks for it, only the
    metrics named by ``name[]`` parameters when there are any, and the answer
    is gzipped when the client accepts it. prometheus_client's own Twisted
    resource binds the global reactor when it is imported; this one only
    renders, which takes no I/O.
    """

    isLeaf = True

    def render_GET(self, request: IRequest) -> Any:
        """Render the default registry (or the part of it asked for)."""
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        encoder, content_type = choose_encoder(accept)
        names = [n.decode("utf-8", "replace") for n in request.args.get(b"name[]", [])]
        registry: Any = REGISTRY.restricted_registry(names) if names else REGISTRY
        output = encoder(registry)
        request.setHeader(b"content-type", content_type.encode())
        encodings = (request.getHeader(b"accept-encoding") or b"").decode("latin-1")
        if "gzip" in [e.split(";")[0].strip() for e in encodings.split(",")]:
            request.setHeader(b"content-encoding", b"gzip")
            output = gzip.compress(output)
        return output
