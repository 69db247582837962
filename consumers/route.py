"""IQD, step 2 — split scored items into high and low quality.

High-quality items are kept as they are; low-quality but usable items go to
refinement. The split is a pluggable policy, chosen by ``pipeline.routing_policy``:
``threshold`` (the judge said "high" and the mean dimension score reaches a bar) or
``cluster_quota``, the paper's: in every diversity cluster the top ``k_ratio`` by
(judge level, difficulty) are high, the rest are refined
(:class:`iterrefine.selection.ClusterQuotaPolicy`).
"""

from __future__ import annotations

from typing import Literal, Protocol

from iterrefine.context import PipelineContext
from iterrefine.model import Item
from iterrefine.runtime import Output, Stage
from iterrefine.selection.policy import ClusterQuotaPolicy

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


def policy_from_config(ctx: PipelineContext) -> RoutingPolicy:
    if ctx.config.routing_policy == "cluster_quota":
        return ClusterQuotaPolicy(ctx.selection, ctx.metrics)
    return ThresholdPolicy(ctx.config.high_min_mean_score)


def stage(ctx: PipelineContext, policy: RoutingPolicy | None = None) -> Stage:
    chosen = policy or policy_from_config(ctx)
    # A policy that can say why (its rank) records that in the item's lineage.
    explain = getattr(chosen, "explain", None)

    # A plain function, not a coroutine: routing never waits, so the runtime runs it
    # inline, a fetched batch at a time (see iterrefine.runtime.stage).
    def route(item: Item) -> list[Output]:
        quality = chosen.quality(item)
        if explain is not None:
            item = explain(item, quality)
        if quality == "high":
            kept = item.with_changes(quality="high", status="high")
            return [Output("items.curated", kept)]
        return [Output("items.refine", item.with_changes(quality="low"))]

    return Stage("route", "items.scored", route)
