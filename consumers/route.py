"""IQD, step 2 — split scored items into high and low quality.

High-quality items are kept as they are; low-quality but usable items go to
refinement. The split is a pluggable policy: this module ships the threshold
policy (the judge said "high" and the mean dimension score reaches a bar). The
paper's per-cluster top-k selection with a difficulty signal plugs in here as
another :class:`RoutingPolicy`.
"""

from __future__ import annotations

from typing import Literal, Protocol

from iterrefine.context import PipelineContext
from iterrefine.model import Item
from iterrefine.runtime import Output, Stage

Quality = Literal["high", "low"]


class RoutingPolicy(Protocol):
    def quality(self, item: Item) -> Quality: ...


class ThresholdPolicy:
    """High iff the judge's verdict is high and the mean score is at least ``min_mean``."""

    def __init__(self, min_mean: float) -> None:
        self.min_mean = min_mean

    def quality(self, item: Item) -> Quality:
        judgement = item.judgement
        if judgement is None or judgement.scores is None:
            return "low"
        if judgement.verdict == "high" and judgement.scores.mean >= self.min_mean:
            return "high"
        return "low"


def stage(ctx: PipelineContext, policy: RoutingPolicy | None = None) -> Stage:
    chosen = policy or ThresholdPolicy(ctx.config.high_min_mean_score)

    # A plain function, not a coroutine: routing never waits, so the runtime runs it
    # inline, a fetched batch at a time (see iterrefine.runtime.stage).
    def route(item: Item) -> list[Output]:
        if chosen.quality(item) == "high":
            kept = item.with_changes(quality="high", status="high")
            return [Output("items.curated", kept)]
        return [Output("items.refine", item.with_changes(quality="low"))]

    return Stage("route", "items.scored", route)
