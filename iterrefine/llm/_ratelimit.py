"""Async token buckets for requests/min and tokens/min limits of one LLM endpoint.

A bucket refills continuously at ``rate_per_s`` up to ``capacity``. ``acquire(n)``
waits (FIFO: waiters queue on a lock) until the level reaches ``min(n, capacity)``
and then takes ``n``, so the level may go negative: a request larger than the
bucket still gets through, and the debt delays the ones after it. That keeps the
long-run rate exact without deadlocking on an estimate above ``capacity``.

Token use is only known after the call, so callers take an estimate first and
:meth:`TokenBucket.adjust` by the difference once ``usage`` arrives.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    """A continuously refilling bucket; ``acquire`` waits, ``adjust`` corrects an estimate."""

    def __init__(
        self,
        *,
        rate_per_s: float,
        capacity: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or capacity <= 0:
            raise ValueError("rate_per_s and capacity must be positive")
        self.rate_per_s = rate_per_s
        self.capacity = capacity
        self._clock = clock
        self._level = capacity
        self._updated = clock()
        self._lock = asyncio.Lock()

    @classmethod
    def per_minute(cls, limit: float) -> TokenBucket:
        """A bucket for a per-minute limit, allowing a burst of about one second's worth."""
        rate = limit / 60.0
        return cls(rate_per_s=rate, capacity=max(rate, 1.0))

    @property
    def level(self) -> float:
        self._refill()
        return self._level

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._updated) * self.rate_per_s)
        self._updated = now

    async def acquire(self, amount: float = 1.0) -> float:
        """Take ``amount``, waiting as long as needed; returns the seconds waited."""
        waited = 0.0
        # Holding the lock while sleeping is the point: waiters are served in order,
        # and a small request cannot starve a large one.
        async with self._lock:
            need = min(amount, self.capacity)
            self._refill()
            while self._level < need:
                delay = (need - self._level) / self.rate_per_s
                await asyncio.sleep(delay)
                waited += delay
                self._refill()
            self._level -= amount
        return waited

    def adjust(self, delta: float) -> None:
        """Take ``delta`` more (positive) or give back ``-delta`` (negative), without waiting."""
        self._refill()
        self._level = min(self.capacity, self._level - delta)
