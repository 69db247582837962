"""Jittered exponential backoff, honouring a server's ``Retry-After``.

Used by the LLM client (:mod:`iterrefine.llm._retries`) and the stage runtime alike,
so both wait the same way between attempts.
"""

from __future__ import annotations

import random

from iterrefine.errors import IterrefineError


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

