"""Hedged requests: a request that has not answered in the role's usual time is sent again.

A server that loses a request (a dropped connection, a stuck worker) makes the caller
wait out the whole ``timeout_s``: with 5% of requests hanging, a 300-item run took
346 s against 4.7 s clean. A hedge is the standard cure ("The Tail at Scale", Dean and
Barroso): once a request has been out for :data:`FACTOR` times the role's recent
95th-percentile latency (at least ``hedge_min_delay_s``), the same request is sent
again, and again after as long, up to :data:`MAX_COPIES` extra copies; the first answer
wins and the rest are cancelled. Nothing is lost by waiting: the first request keeps
running, so an answer that is merely slow still counts. ``hedge = false`` turns it off
for a role (a server that bills cancelled requests, say).

The cost is bounded. Hedges start only once the role has :data:`MIN_SAMPLES` latencies to
judge by, never past ``timeout_s``, and at most :data:`BUDGET` of the role's recent
requests may be copies: when a whole server slows down, its latencies (and so the
delay) grow with it, and the budget keeps hedging from adding to its load.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from iterrefine.config import LLMRoleConfig
from iterrefine.llm.latency import percentile

T = TypeVar("T")
log = structlog.get_logger("iterrefine.llm")

#: Latencies (of answered requests) the delay is judged by, and how many it needs.
WINDOW = 256
MIN_SAMPLES = 20
#: A copy goes after this many times the recent p95 latency (at least the role's
#: ``hedge_min_delay_s``), then again after as long, at most ``MAX_COPIES`` times.
FACTOR = 3.0
MAX_COPIES = 3
#: At most this share of a role's last ``BUDGET_WINDOW`` requests may be copies.
BUDGET = 0.2
BUDGET_WINDOW = 200


class Hedging:
    """The hedging policy of one role: when to send a copy, and whether one may go."""

    def __init__(self, role: str, config: LLMRoleConfig) -> None:
        self._role = role
        self._enabled = config.hedge
        self._floor_s = config.hedge_min_delay_s
        self._timeout_s = config.timeout_s
        self._latencies: collections.deque[float] = collections.deque(maxlen=WINDOW)
        self._answered = 0
        self._delay_s: float | None = None
        self._recent: collections.deque[bool] = collections.deque(maxlen=BUDGET_WINDOW)
        #: Copies sent, over the client's life (``LLMStats.hedged``).
        self.sent = 0

    def answered(self, seconds: float) -> None:
        """An attempt was answered after ``seconds``: the delay follows the latencies."""
        self._latencies.append(seconds)
        self._answered += 1
        # Every 8th answer: sorting the window per answer would cost more than it tells.
        if self._answered >= MIN_SAMPLES and self._answered % 8 == 0:
            p95 = percentile(list(self._latencies), 0.95) or 0.0
            delay = max(self._floor_s, FACTOR * p95)
            self._delay_s = delay if delay < self._timeout_s else None

    def delay_s(self) -> float | None:
        """How long a request waits before its first copy; None: not (yet) hedged."""
        return self._delay_s if self._enabled else None

    def _wait_s(self, sent_at: float, copies: int, not_before: float,
                now: float) -> float | None:
        """How long to wait for an answer before looking again (None: until one comes)."""
        if copies >= MAX_COPIES:
            return None
        if self._delay_s is None:  # not known yet: look again once it may be
            return self._floor_s
        return max(0.0, max(sent_at + self._delay_s * (copies + 1), not_before) - now)

    def _may_send(self) -> bool:
        # With this copy, copies stay within BUDGET of the recent requests (one spare).
        return sum(self._recent) + 1 <= BUDGET * (len(self._recent) + 1) + 1

    async def run(self, send: Callable[[], Awaitable[T]]) -> T:
        """``send()``, hedged: the first answer of it and its copies, the rest cancelled.

        Called once the request has its slot (queueing for one is not lateness). A
        failure while a copy is still out waits for that copy; once all have failed the
        first failure is raised. A request sent before the role knew its latencies (the
        first burst of a run) is hedged as soon as they are known, counting from when it
        was sent.
        """
        self._recent.append(False)
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        if not self._enabled:
            return await send()

        async def timed() -> tuple[T, float]:
            started = loop.time()
            answer = await send()
            return answer, loop.time() - started

        pending: set[asyncio.Future[tuple[T, float]]] = {asyncio.ensure_future(timed())}
        failures: list[BaseException] = []
        copies = 0
        not_before = sent_at  # a copy over budget is put off by a delay, not dropped
        try:
            while pending:
                wait = self._wait_s(sent_at, copies, not_before, loop.time())
                done, pending = await asyncio.wait(pending, timeout=wait,
                                                   return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    error = task.exception()
                    if error is None:
                        answer, seconds = task.result()
                        self.answered(seconds)
                        return answer
                    failures.append(error)
                delay = self._delay_s
                now = loop.time()
                due = (delay is not None and now >= sent_at + delay * (copies + 1)
                       and now >= not_before)
                if done or not due or copies >= MAX_COPIES:
                    continue
                if not self._may_send():
                    not_before = now + (delay or self._floor_s)
                    continue
                copies += 1
                self.sent += 1
                self._recent.append(True)
                log.debug("llm_hedged", role=self._role, copy=copies,
                          after_s=round(now - sent_at, 3))
                pending.add(asyncio.ensure_future(timed()))
            raise failures[0]
        finally:
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
