"""The node's Prometheus metrics, defined in one place (served at ``/metrics``).

They live in prometheus_client's default registry: one node is one process.
"""

from prometheus_client import Counter, Gauge

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
