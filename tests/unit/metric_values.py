"""Reading prometheus_client's default registry in unit tests.

The registry is process-wide and other tests count into it too, so tests
compare values before and after the step they check.
"""

from __future__ import annotations

from prometheus_client import REGISTRY


def value(name: str, **labels: str) -> float:
    """The current value of sample ``name`` with ``labels`` (0 if absent)."""
    found = REGISTRY.get_sample_value(name, labels)
    return 0.0 if found is None else found


class Delta:
    """The change of one sample since this object was made.

    :param name: the sample's name (``wsha_messages_in_total``...).
    :param labels: its labels.
    """

    def __init__(self, name: str, **labels: str):
        self.name = name
        self.labels = labels
        self.start = value(name, **labels)

    def __call__(self) -> float:
        """How much the sample grew since."""
        return value(self.name, **self.labels) - self.start
