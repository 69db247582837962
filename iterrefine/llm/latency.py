"""Raw call latencies, kept bounded, and percentiles computed from them.

Histogram buckets are for dashboards; a summary that reads its p95 off a bucket edge
reports the edge (120.0 s), not the calls (177 s). Each client keeps a uniform sample
of its raw timings instead (reservoir sampling, Vitter's algorithm R): every timing
while there are fewer than ``size``, then each new one replaces a random slot with
probability ``size / seen``, so memory stays bounded on long runs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Final

DEFAULT_RESERVOIR_SIZE: Final = 4096


class Reservoir:
    """A uniform random sample of at most ``size`` of the values added."""

    def __init__(self, size: int = DEFAULT_RESERVOIR_SIZE, *, seed: int = 0) -> None:
        if size < 1:
            raise ValueError(f"reservoir size must be >= 1, got {size}")
        self._size = size
        self._values: list[float] = []
        self._seen = 0
        self._total = 0.0
        self._random = random.Random(seed)

    def add(self, value: float) -> None:
        self._seen += 1
        self._total += value
        if len(self._values) < self._size:
            self._values.append(value)
            return
        slot = self._random.randrange(self._seen)
        if slot < self._size:
            self._values[slot] = value

    @property
    def seen(self) -> int:
        return self._seen

    @property
    def total(self) -> float:
        """The exact sum of every value added (not only the sampled ones)."""
        return self._total

    def sample(self) -> tuple[float, ...]:
        return tuple(self._values)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0–1) of ``values`` by linear interpolation (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    fraction = position - low
    return ordered[low] + (ordered[high] - ordered[low]) * fraction
