"""``cluster_quota``: the paper's routing policy (IQD, stage 2's split).

Implements ``consumers.route.RoutingPolicy``: an item is high when it ranks in the top
``k_ratio`` of its diversity cluster by (judge level, difficulty). Two mechanisms:

* :class:`ExactQuotaPolicy` — ``iterrefine run``: the run's one decision over the
  whole input (:mod:`iterrefine.selection.barrier`), looked up by item id;
* :class:`ClusterQuotaPolicy` — online: a running per-cluster rank
  (:mod:`iterrefine.selection.quota`); the cluster id and the difficulty come with the
  item from scoring, and an item without them (scored before the policy was switched
  on) ranks as difficulty 0 in the warm-up pseudo-cluster.

Both record the decision in the item's lineage (:meth:`explain`): cluster, rank, the
bar it was measured against, and the mode.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from prometheus_client import Counter, Gauge

from iterrefine.config import SelectionConfig
from iterrefine.errors import ValidationError
from iterrefine.item.model import Item, Selection
from iterrefine.observe.metrics import Metrics
from iterrefine.selection import _records as records
from iterrefine.selection.barrier import DecisionTable
from iterrefine.selection.quota import ClusterQuota, QuotaDecision

Quality = Literal["high", "low"]


def rank_key(item: Item) -> tuple[int, float]:
    """(2 for a high judge verdict else 1, difficulty): the paper's ranking key."""
    judgement = item.judgement
    level = 2 if judgement is not None and judgement.verdict == "high" else 1
    difficulty = item.difficulty.value if item.difficulty is not None else 0.0
    return level, difficulty


def _label(cluster: int | None) -> str:
    return "warmup" if cluster is None else str(cluster)


class ClusterQuotaPolicy:
    """Per-cluster running top-``k_ratio`` by (judge level, difficulty)."""

    name = "cluster_quota"

    def __init__(self, config: SelectionConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self._metrics = metrics
        self._items_series: dict[tuple[int | None, Quality], Counter] = {}
        self._share_series: dict[int | None, Gauge] = {}
        self.reset_state()

    def reset_state(self) -> None:
        """Forget every rank: a route worker given partitions replays their history
        (:class:`iterrefine.runtime.StatefulHandler`)."""
        self.quota = ClusterQuota(self.config.k_ratio, self.config.rank_window,
                                  self.config.quota_correction_items)
        self._last: tuple[str, QuotaDecision] | None = None

    def replay(self, item: Item) -> None:
        """Rank ``item`` (routed before, by this worker or the partition's previous owner)
        into its cluster again, as when it was routed; nothing is counted in metrics."""
        self._decide(item)

    def _decide(self, item: Item) -> tuple[int | None, QuotaDecision]:
        selection = item.selection
        cluster = selection.cluster if selection is not None else None
        cut = None if selection is None or selection.cut_level is None else (
            selection.cut_level, selection.cut_difficulty or 0.0)
        prior = None if selection is None else selection.stream_high_share
        return cluster, self.quota.decide(cluster, rank_key(item), cut, prior)

    def quality(self, item: Item) -> Quality:
        cluster, decision = self._decide(item)
        self._last = (item.id, decision)
        quality: Quality = "high" if decision.high else "low"
        if self._metrics is not None:
            self._counted(self._metrics, cluster, quality).inc()
            size = self.quota.size(cluster)
            assert size is not None  # _decide has just counted the item in its cluster
            seen, high = size
            self._share(self._metrics, cluster).set(high / seen)
        return quality

    # The labelled series are looked up once each, and only when first used (a series
    # exists from its first sample, as with labels() per item): labels() validates and
    # hashes its labels on every call.

    def _counted(self, metrics: Metrics, cluster: int | None, quality: Quality) -> Counter:
        series = self._items_series.get((cluster, quality))
        if series is None:
            series = self._items_series[cluster, quality] = (
                metrics.selection_items_total.labels(cluster=_label(cluster), quality=quality))
        return series

    def _share(self, metrics: Metrics, cluster: int | None) -> Gauge:
        series = self._share_series.get(cluster)
        if series is None:
            series = self._share_series[cluster] = (
                metrics.selection_high_share.labels(cluster=_label(cluster)))
        return series

    def quota_rule(self) -> str:
        """What decided the last item (``QuotaDecision.rule``)."""
        return "" if self._last is None else self._last[1].rule

    def explain(self, item: Item, quality: Quality) -> Item:
        """``item`` with the decision (rank, bar) recorded in its selection lineage."""
        selection = item.selection
        if selection is None:
            return item
        last = self._last[1] if self._last is not None and self._last[0] == item.id else None
        size = self.quota.size(selection.cluster)
        seen = None if size is None else size[0]
        return item.with_changes(selection=msgspec.structs.replace(
            selection, decision=quality, rank=None if last is None else last.rank,
            bar=None if last is None else last.bar, mode="online", cluster_items=seen,
            rule="" if last is None else last.rule))


class ExactQuotaPolicy:
    """The run's exact decision per item (read by every route worker before it routes)."""

    name = "cluster_quota"

    def __init__(self, table: DecisionTable, metrics: Metrics | None = None) -> None:
        self.table = table
        self._metrics = metrics

    def _decision(self, item: Item) -> records.Decision:
        decision = self.table.get(item.id)
        if decision is None:
            raise ValidationError(
                f"item {item.id!r} has no exact selection decision: it was not scored by this "
                "run's score stage (replayed into route, or scored under another mode)",
                reason="no_selection_decision")
        return decision

    def quality(self, item: Item) -> Quality:
        decision = self._decision(item)
        quality: Quality = "high" if decision.position < decision.highs else "low"
        if self._metrics is not None:
            label = str(decision.cluster)
            self._metrics.selection_items_total.labels(cluster=label, quality=quality).inc()
            self._metrics.selection_high_share.labels(cluster=label).set(
                decision.highs / decision.size)
        return quality

    def explain(self, item: Item, quality: Quality) -> Item:
        """``item`` with its place in its cluster, the cluster's bar, size and the run's k."""
        decision = self._decision(item)
        previous = item.selection or Selection(cluster=None)
        return item.with_changes(selection=msgspec.structs.replace(
            previous, cluster=decision.cluster, decision=quality,
            rank=decision.position / decision.size, bar=decision.highs / decision.size,
            mode="exact", cluster_items=decision.size, k=decision.k, rule="exact"))
