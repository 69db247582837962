"""Jittered exponential backoff, honouring a server's ``Retry-After``.

Used by the LLM client and the stage runtime alike, so both retry the same way.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from iterrefine.errors import IterrefineError, TransientError

T = TypeVar("T")


class Backoff:
    """Full-jitter exponential backoff: delay_n = uniform(0, min(max_s, base_s * 2**n))."""

    def __init__(
        self, *, base_s: float = 0.2, max_s: float = 30.0, rng: random.Random | None = None
    ) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self._rng = rng or random.Random()

    def delay_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        cap = min(self.max_s, self.base_s * (2**attempt))
        delay = self._rng.uniform(cap / 2, cap)
        if retry_after_s is not None:
            # The server knows its queue better than we do: never retry earlier than asked,
            # but add a little jitter so that a crowd of clients does not return at once.
            delay = max(delay, retry_after_s + self._rng.uniform(0, self.base_s))
        return delay


def is_retriable(exc: BaseException) -> bool:
    return isinstance(exc, IterrefineError) and exc.retriable


async def retry_async(
    call: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    backoff: Backoff,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> T:
    """Run ``call`` until it succeeds, raises a non-retriable error, or ``attempts`` run out."""
    for attempt in range(attempts):
        try:
            return await call()
        except Exception as exc:
            if not is_retriable(exc) or attempt == attempts - 1:
                raise
            retry_after = exc.retry_after_s if isinstance(exc, TransientError) else None
            delay = backoff.delay_s(attempt, retry_after)
            if on_retry is not None:
                on_retry(attempt + 1, exc, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable: attempts must be >= 1")
