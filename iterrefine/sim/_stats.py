"""What the simulator counts: requests, concurrency over time, and a request log.

Busy time is the integral of the number of requests being served over time
(request-seconds); divided by ``capacity × uptime`` it is the server's utilisation.
It is advanced on every change of concurrency, so it is exact, not sampled. The time
series samples the *mean* concurrency of each interval, so short bursts still show.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any


class SimStats:
    """Counters and concurrency accounting of one simulator server (one event loop)."""

    def __init__(
        self, *, capacity: int, series_size: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._capacity = capacity
        self._clock = clock
        self.started = clock()
        self.concurrency = 0
        self.queued = 0
        self._series: deque[tuple[float, int, int, float]] = deque(maxlen=series_size)
        self.reset()

    def reset(self) -> None:
        """Zero the counters and the series; requests in flight stay counted as in flight."""
        now = self._clock()
        self.total = 0
        self.by_task: Counter[str] = Counter()
        self.by_status: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.peak_concurrency = self.concurrency
        self.peak_queued = self.queued
        self.busy_s = 0.0
        self._reset_at = now
        self._last_change = now
        self._last_sample = now
        self._busy_at_sample = 0.0
        self._series.clear()
        #: When the first request since the reset arrived (a command's time to first call).
        self.first_request_at: float | None = None

    def _advance(self, now: float) -> None:
        self.busy_s += self.concurrency * (now - self._last_change)
        self._last_change = now

    def request(self, task: str) -> None:
        if self.first_request_at is None:
            self.first_request_at = self._clock()
        self.total += 1
        self.by_task[task] += 1

    def finished(self, status: int | str) -> None:
        self.by_status[str(status)] += 1

    def fault(self, kind: str) -> None:
        self.faults[kind] += 1

    def enqueue(self) -> None:
        self.queued += 1
        self.peak_queued = max(self.peak_queued, self.queued)

    def dequeue(self) -> None:
        self.queued -= 1

    def start_serving(self) -> None:
        self._advance(self._clock())
        self.concurrency += 1
        self.peak_concurrency = max(self.peak_concurrency, self.concurrency)

    def stop_serving(self) -> None:
        self._advance(self._clock())
        self.concurrency -= 1

    def sample(self) -> None:
        """Append one point of the time series: the mean concurrency since the last point."""
        now = self._clock()
        self._advance(now)
        span = now - self._last_sample
        mean = (self.busy_s - self._busy_at_sample) / span if span > 0 else float(self.concurrency)
        self._series.append((now - self.started, self.concurrency, self.queued, mean))
        self._last_sample = now
        self._busy_at_sample = self.busy_s

    def snapshot(self, *, series: bool = True) -> dict[str, Any]:
        now = self._clock()
        self._advance(now)
        since_reset = now - self._reset_at
        served_capacity = self._capacity * since_reset
        out: dict[str, Any] = {
            "simulator": True,
            "requests_total": self.total,
            "first_request_uptime_s": None if self.first_request_at is None
            else round(self.first_request_at - self.started, 6),
            "by_task": dict(self.by_task),
            "by_status": dict(self.by_status),
            "faults": dict(self.faults),
            "concurrency": self.concurrency,
            "peak_concurrency": self.peak_concurrency,
            "queued": self.queued,
            "peak_queued": self.peak_queued,
            "busy_s": self.busy_s,
            "capacity": self._capacity,
            "utilisation": self.busy_s / served_capacity if served_capacity > 0 else None,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "uptime_s": now - self.started,
            "since_reset_s": since_reset,
        }
        if series:
            points = list(self._series)
            out["series"] = {
                "t_s": [round(p[0], 3) for p in points],
                "concurrency": [p[1] for p in points],
                "queued": [p[2] for p in points],
                "mean_concurrency": [round(p[3], 3) for p in points],
            }
        return out


class RequestLog:
    """The last ``size`` requests with their task, round, status and full messages."""

    def __init__(self, size: int) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=size)
        self.size = size

    def add(self, entry: dict[str, Any]) -> None:
        self._entries.append(entry)

    def clear(self) -> None:
        self._entries.clear()

    def recent(self, *, limit: int | None = None, task: str | None = None) -> list[dict[str, Any]]:
        entries = [e for e in self._entries if task is None or e["task"] == task]
        return entries if limit is None else entries[-limit:] if limit > 0 else []
