"""``cluster_quota``: the paper's routing policy (IQD, stage 2's split).

Implements ``consumers.route.RoutingPolicy``: an item is high when it ranks in the top
``k_ratio`` of its diversity cluster by (judge level, difficulty). The cluster id and
the difficulty come with the item from scoring (:mod:`iterrefine.selection.selector`);
an item without them (scored before the policy was switched on) ranks as difficulty 0
in the warm-up pseudo-cluster.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from iterrefine.config import SelectionConfig
from iterrefine.item.model import Item
from iterrefine.observe.metrics import Metrics
from iterrefine.selection.quota import ClusterQuota, QuotaDecision

Quality = Literal["high", "low"]


def rank_key(item: Item) -> tuple[int, float]:
    """(2 for a high judge verdict else 1, difficulty): the paper's ranking key."""
    judgement = item.judgement
    level = 2 if judgement is not None and judgement.verdict == "high" else 1
    difficulty = item.difficulty.value if item.difficulty is not None else 0.0
    return level, difficulty


class ClusterQuotaPolicy:
    """Per-cluster running top-``k_ratio`` by (judge level, difficulty)."""

    name = "cluster_quota"

    def __init__(self, config: SelectionConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.quota = ClusterQuota(config.k_ratio, config.rank_window,
                                  config.quota_correction_items)
        self._metrics = metrics
        self._last: tuple[str, QuotaDecision] | None = None

    def quality(self, item: Item) -> Quality:
        cluster = item.selection.cluster if item.selection is not None else None
        decision = self.quota.decide(cluster, rank_key(item))
        self._last = (item.id, decision)
        quality: Quality = "high" if decision.high else "low"
        if self._metrics is not None:
            label = "warmup" if cluster is None else str(cluster)
            self._metrics.selection_items_total.labels(cluster=label, quality=quality).inc()
            seen, high = self.quota.sizes()[cluster]
            self._metrics.selection_high_share.labels(cluster=label).set(high / seen)
        return quality

    def explain(self, item: Item, quality: Quality) -> Item:
        """``item`` with the decision (and its rank) recorded in its selection lineage."""
        selection = item.selection
        if selection is None:
            return item
        rank = self._last[1].rank if self._last is not None and self._last[0] == item.id else None
        return item.with_changes(
            selection=msgspec.structs.replace(selection, decision=quality, rank=rank))
