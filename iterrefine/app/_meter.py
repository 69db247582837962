"""What a run has done and spent so far: progress events in the logs and the cost cap.

:class:`RunMeter` hears the items arrive (the watcher's ``on_progress``) and the
input's size (``on_ingested``), and reads the LLM roles' counters of this process.
Every ``progress_every_s`` it logs ``run_progress`` (items done/total, rate, ETA,
calls, tokens, money so far): the progress bar of a run whose stderr is a file or a
log collector. With a cost cap it watches the roles' :class:`~iterrefine.llm.budget.Budget`
every :data:`CAP_CHECK_S`: once a call was refused for want of budget (a handler that
needs one is abandoned, uncommitted), the run stops: in-flight work drains, and
what is not done stays out of the output.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from iterrefine.config import LLMRoleConfig
from iterrefine.errors import ConfigError
from iterrefine.llm import LLMStats
from iterrefine.llm.budget import Budget

log = structlog.get_logger("iterrefine.run")

#: How often the cost cap is checked (progress events have their own interval).
CAP_CHECK_S = 0.1


def money_of(stats: Mapping[str, LLMStats], roles: Mapping[str, LLMRoleConfig]) -> float | None:
    """Money spent at the roles' prices per million tokens; None when no role has one."""
    total, priced = 0.0, False
    for name, role_stats in stats.items():
        role = roles.get(name)
        if role is None or (role.price_in_per_mtok is None and role.price_out_per_mtok is None):
            continue
        priced = True
        total += (role_stats.prompt_tokens * (role.price_in_per_mtok or 0.0)
                  + role_stats.completion_tokens * (role.price_out_per_mtok or 0.0)) / 1e6
    return total if priced else None


def check_cost_cap(max_cost: float | None, roles: Mapping[str, LLMRoleConfig], *,
                   workers: int) -> None:
    """A cap the run can keep, or :class:`ConfigError` saying what is missing."""
    if max_cost is None:
        return
    if not max_cost > 0:
        raise ConfigError(f"max_cost must be above 0, got {max_cost}")
    if money_of({name: LLMStats() for name in roles}, roles) is None:
        raise ConfigError(
            "max_cost needs prices: set price_in_per_mtok and price_out_per_mtok under "
            "[llm.strong] and [llm.backbone] (with --llm sim too: a table of prices only)")
    if workers > 1:
        raise ConfigError("max_cost counts this process's LLM calls: use it with --workers 1")


@dataclass
class CapReached:
    """The run was stopped by its cost cap (the summary's ``stopped_by_cost_cap``)."""

    max_cost: float
    money_at_stop: float
    items_done: int


class RunMeter:
    """Counts the run's items and spend; logs progress and enforces the cost cap."""

    def __init__(
        self,
        stats: Callable[[], Mapping[str, LLMStats]],
        roles: Mapping[str, LLMRoleConfig],
        *,
        budget: Budget | None,
        progress_every_s: float | None,
        stop: asyncio.Event,
    ) -> None:
        self._stats = stats
        self._roles = roles
        self._every_s = progress_every_s
        self._budget = budget
        self._stop = stop
        self._started = time.monotonic()
        self.done = 0
        self.total: int | None = None
        self.cap_reached: CapReached | None = None

    def on_progress(self, new: int) -> None:
        self.done += new

    def on_ingested(self, total: int) -> None:
        self.total = total

    def snapshot(self) -> dict[str, Any]:
        """Items done/total, rate and ETA, and this process's calls, tokens and money."""
        elapsed = time.monotonic() - self._started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (None if self.total is None or rate <= 0
               else round(max(0, self.total - self.done) / rate, 1))
        stats = self._stats()
        money = money_of(stats, self._roles)
        return {
            "done": self.done, "total": self.total, "elapsed_s": round(elapsed, 1),
            "rate_per_s": round(rate, 2), "eta_s": eta,
            "calls": sum(s.requests for s in stats.values()),
            "prompt_tokens": sum(s.prompt_tokens for s in stats.values()),
            "completion_tokens": sum(s.completion_tokens for s in stats.values()),
            "money": None if money is None else round(money, 6),
        }

    async def watch(self) -> None:
        """Log progress and check the cap until cancelled (the run's exit stack does)."""
        if self._every_s is None and self._budget is None:
            return
        next_log = self._started + (self._every_s or 0.0)
        while True:
            await asyncio.sleep(CAP_CHECK_S if self._budget is not None
                                else max(0.0, next_log - time.monotonic()))
            if self._budget is not None and self.cap_reached is None:
                self._check_cap(self._budget)
            if self._every_s is not None and time.monotonic() >= next_log:
                log.info("run_progress", **self.snapshot())
                next_log += self._every_s

    def _check_cap(self, budget: Budget) -> None:
        if not budget.reached:
            return
        self.cap_reached = CapReached(budget.max_cost, round(budget.spent, 6), self.done)
        log.warning("cost_cap_reached", max_cost=budget.max_cost, money=round(budget.spent, 6),
                    items_done=self.done,
                    fix="raise --max-cost, or rerun the same command: the answers already "
                    "received are cached and cost nothing again")
        self._stop.set()
