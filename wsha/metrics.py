"""The node's Prometheus metrics, defined in one place (served at ``/metrics``).

They live in prometheus_client's default registry: one node is one process.
"""

from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    generate_latest,
)
from twisted.web import resource
from twisted.web.iweb import IRequest

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


class MetricsPage(resource.Resource):
    """``GET /metrics``: every metric in Prometheus' text format.

    prometheus_client's own Twisted resource binds the global reactor when it
    is imported; this one only renders, which takes no I/O.
    """

    isLeaf = True

    def render_GET(self, request: IRequest) -> Any:
        """Render the default registry."""
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(REGISTRY)
