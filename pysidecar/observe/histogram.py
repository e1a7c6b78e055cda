"""A histogram with Envoy's default bucket bounds: what the data path records into per request.

Promises:
- `record(value)` costs one bisect and three additions, no allocation; `state()` is a copy of
  the counts that merges by addition across workers (stats.merge).
- Its own module, apart from the stat blocks' declaration tables (stats.py, whose metaclass
  mypyc cannot compile), so that the compiled data path calls `record` as a native method.
"""

from __future__ import annotations

import bisect
from typing import Final

# (bucket upper bounds, count per bucket plus the overflow bucket, sample count, sample sum)
HistogramState = tuple[tuple[float, ...], list[int], int, float]

# Envoy's default histogram buckets (ms), which Istio's request duration also uses.
DEFAULT_BUCKETS: Final[tuple[float, ...]] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
    300000, 600000, 1800000, 3600000,
)  # fmt: skip


class Histogram:
    __slots__ = ("buckets", "count", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.count = 0
        self.sum = 0.0

    def record(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.count += 1
        self.sum += value

    def state(self) -> HistogramState:
        return (self.buckets, list(self.counts), self.count, self.sum)
