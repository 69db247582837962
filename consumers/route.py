"""IQD, step 2 — split scored items into high and low quality.

High-quality items are kept as they are; low-quality but usable items go to
refinement. The split is a pluggable policy, chosen by ``pipeline.routing_policy``:
``threshold`` (the judge said "high" and the mean dimension score reaches a bar) or
``cluster_quota``, the paper's: in every diversity cluster the top ``k_ratio`` by
(judge level, difficulty) are high, the rest are refined. On a finite input
(``iterrefine run``) that is the paper's exact procedure: route waits until every item
is scored, then k-means runs over all of them and each item gets its place in its
cluster (:class:`iterrefine.selection.ExactQuotaPolicy`). Long-running workers rank
each cluster as its items stream in (:class:`iterrefine.selection.ClusterQuotaPolicy`).
Another :class:`RoutingPolicy` plugs in by name (:data:`POLICIES`) or as ``module:attr``
of a factory taking the pipeline context.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol, runtime_checkable

from iterrefine.consumers.reentry import before_refinement
from iterrefine.errors import ConfigError, ValidationError
from iterrefine.graph.context import PipelineContext
from iterrefine.graph.spec import StageSpec, load_object
from iterrefine.item.model import Item
from iterrefine.runtime import InlineHandler, Output

Quality = Literal["high", "low"]


class RoutingPolicy(Protocol):
    def quality(self, item: Item) -> Quality: ...


@runtime_checkable
class RankingPolicy(Protocol):
    """A policy that decides by the items before (the online quota's running ranks)."""

    def quality(self, item: Item) -> Quality: ...

    def reset_state(self) -> None: ...

    def replay(self, item: Item) -> None: ...


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


PolicyFactory = Callable[[PipelineContext], RoutingPolicy]

#: Routing policies by name (``pipeline.routing_policy``).
POLICIES: dict[str, PolicyFactory] = {
    "threshold": lambda ctx: ThresholdPolicy(ctx.config.high_min_mean_score),
    "cluster_quota": lambda ctx: _cluster_quota(ctx),
}


def _cluster_quota(ctx: PipelineContext) -> RoutingPolicy:
    # Imported on use: the selection mechanisms bring numpy, which threshold routing
    # does not need.
    from iterrefine.selection.policy import ClusterQuotaPolicy, ExactQuotaPolicy

    if ctx.decisions is not None:
        return ExactQuotaPolicy(ctx.decisions, ctx.metrics)
    return ClusterQuotaPolicy(ctx.selection, ctx.metrics)


def policy_for(ctx: PipelineContext) -> RoutingPolicy:
    """The configured policy: a name of :data:`POLICIES`, or ``module:attr`` of a factory."""
    name = ctx.config.routing_policy
    factory = POLICIES.get(name)
    if factory is None:
        if ":" not in name:
            raise ConfigError(f"unknown routing policy {name!r}: use one of "
                              f"{', '.join(POLICIES)}, or module:attr of a policy factory")
        factory = load_object(name, what="routing policy")
        if not callable(factory):
            raise ConfigError(f"routing policy {name!r} is a {type(factory).__name__}, not a "
                              "factory (PipelineContext) -> RoutingPolicy")
    policy = factory(ctx)
    if not callable(getattr(policy, "quality", None)):
        raise ConfigError(f"routing policy {name!r} made {policy!r:.100}, which has no "
                          "quality(item) method")
    return policy


class Route:
    """Routes an item by the policy's quality; a policy that can say why (its rank)
    records that in the item's lineage. A plain call, not a coroutine: routing never
    waits, so the runtime runs it inline, a fetched batch at a time
    (see iterrefine.runtime.stage)."""

    def __init__(self, policy: RoutingPolicy) -> None:
        self.policy = policy
        self._explain = getattr(policy, "explain", None)

    def __call__(self, item: Item) -> list[Output]:
        quality = self.policy.quality(item)
        if self._explain is not None:
            item = self._explain(item, quality)
        if quality == "high":
            kept = item.with_changes(quality="high", status="high")
            return [Output("items.curated", kept)]
        return [Output("items.refine", item.with_changes(quality="low"))]


class RankingRoute(Route):
    """Routing by running ranks: the runtime rebuilds them from the history of the
    partitions Kafka hands this worker (:class:`iterrefine.runtime.StatefulHandler`), so
    a restarted worker, or one taking over a cluster, ranks as its owner did."""

    def __init__(self, policy: RankingPolicy) -> None:
        super().__init__(policy)
        self._ranking = policy

    def reset_state(self) -> None:
        self._ranking.reset_state()

    def replay(self, item: Item) -> None:
        self._ranking.replay(item)


def handler(ctx: PipelineContext, policy: RoutingPolicy | None = None) -> InlineHandler:
    chosen = policy or policy_for(ctx)
    return RankingRoute(chosen) if isinstance(chosen, RankingPolicy) else Route(chosen)


def reset(item: Item, revision: int) -> Item:
    """Replay into route: only usable, scored items; their refinement starts over."""
    if item.judgement is None:
        raise ValidationError("the item was never scored", reason="not_scored")
    if not item.judgement.usable:
        raise ValidationError("the judge found the item unusable", reason="unusable")
    return before_refinement(item, revision).with_changes(quality=None)


SPEC = StageSpec(
    name="route", input_topic="items.scored", outputs=("items.curated", "items.refine"),
    waits=False, handler=handler, reset=reset,
    summary="high-quality items are kept; low-quality ones go to refinement",
)
