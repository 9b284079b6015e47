"""What this process has counted about itself, as plain numbers read when metrics are scraped.

Kept free of any metrics library: the ledger's hot paths only add to ints and lists here, and
the web layer (api/metrics.py) turns them into Prometheus families at scrape time.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter

# Seconds: from a few milliseconds (a NOTIFY in flight) to a minute (a server cut off).
REVOCATION_BUCKETS: tuple[float, ...] = (
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
)


class Observations:
    """A fixed-bucket histogram: per-bucket counts (not cumulative), their sum and count."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self._counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, value)] += 1
            self._sum += value

    def snapshot(self) -> tuple[list[tuple[str, int]], float]:
        """Cumulative buckets as Prometheus wants them (`le` label, count), and the sum."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        out, running = [], 0
        for bound, count in zip([*map(_le, self.buckets), "+Inf"], counts):
            running += count
            out.append((bound, running))
        return out, total

    @property
    def count(self) -> int:
        with self._lock:
            return sum(self._counts)


def _le(bound: float) -> str:
    return repr(float(bound))


class ProcessStats:
    """Counts kept by a `Service` about what this process did and saw."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._written: Counter[str] = Counter()
        # Seconds from a Refreshed or Deleted token event's timestamp (written by another process)
        # to the moment this process evicted that token from its authentication cache.
        self.revocation_visibility = Observations(REVOCATION_BUCKETS)

    def written(self, event_types: list[str]) -> None:
        with self._lock:
            self._written.update(event_types)

    def events_written(self) -> dict[str, int]:
        with self._lock:
            return dict(self._written)
