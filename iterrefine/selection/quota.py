"""The per-cluster quota, in a stream: keep the top ``k_ratio`` of every cluster high.

The paper ranks each finished cluster by (judge level, difficulty), high level first
and each level by difficulty descending, and keeps ``round(k_ratio · n)`` items. A
stream never finishes, so each cluster keeps a window of its recent rank keys and
ranks every new item against it: the share of the window ranked above the item is
its *rank*, and the item is high when the rank is below ``k_ratio``. A running-count
correction holds the realised high share at ``k_ratio``: when the cluster has given
out fewer highs than ``k_ratio · n`` the bar is lowered by the deficit (relative to the
window), and raised by a surplus, so the share cannot drift even when the key
distribution does.

The ranking is lexicographic, as the paper's: within a cluster, a judge-high item is
never refined while a judge-low one is kept. A stream decides before it has seen the
whole cluster, so the rule is kept as an invariant: once a cluster has kept an item of
level L, every later item of a higher level is kept (bar 1); once it has refined an
item of level L, every later item of a lower level is refined (bar 0). The count
correction then makes up the share with the items that follow.

One instance ranks every cluster it sees; for the ranks to be the paper's "one ranking
per cluster", each cluster must have exactly one owner — the score stage sends all
items of a cluster to one partition of ``items.scored`` (see ``consumers.score``).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field

#: (judge level: 2 = high verdict, 1 = low; difficulty): larger ranks higher.
RankKey = tuple[int, float]
LOWEST, HIGHEST = 1, 2


@dataclass
class _Cluster:
    window: deque[RankKey] = field(default_factory=deque)
    ordered: list[RankKey] = field(default_factory=list)
    seen: int = 0
    high: int = 0
    #: Lowest judge level kept high so far, highest refined (the lexicographic invariant).
    lowest_kept: int | None = None
    highest_refined: int | None = None


@dataclass(frozen=True, slots=True)
class QuotaDecision:
    high: bool
    #: Share of the cluster's window ranked strictly above this item (before it joined).
    rank: float
    #: The bar the rank was compared with (``k_ratio`` corrected by the running count).
    bar: float


class ClusterQuota:
    """Running per-cluster ranks; one instance per routing process."""

    def __init__(self, k_ratio: float, window: int = 2000, correction_items: int = 20) -> None:
        self.k_ratio = k_ratio
        self.window = window
        #: A deficit of this many highs moves the bar by the whole rank range: the
        #: smaller, the tighter the share is held (and the more the rank is overruled).
        self.correction_items = correction_items
        self._clusters: dict[int | None, _Cluster] = {}

    def decide(self, cluster: int | None, key: RankKey) -> QuotaDecision:
        state = self._clusters.get(cluster)
        if state is None:
            state = self._clusters[cluster] = _Cluster()
        ordered = state.ordered
        above = len(ordered) - bisect.bisect_right(ordered, key)
        ties = bisect.bisect_right(ordered, key) - bisect.bisect_left(ordered, key)
        rank = (above + ties / 2) / len(ordered) if ordered else 0.0
        # Deficit of highs against the quota so far, counting this item: lower the bar
        # by it (as a share of the window), raise it by a surplus.
        deficit = self.k_ratio * (state.seen + 1) - state.high
        bar = self.k_ratio + (deficit - self.k_ratio) / max(
            1, min(len(ordered), self.correction_items))
        level = key[0]
        high = rank < bar
        if state.lowest_kept is not None and level > state.lowest_kept:
            high, bar = True, 1.0  # a lower level was kept: refining this would invert
        elif state.highest_refined is not None and level < state.highest_refined:
            high, bar = False, 0.0  # a higher level was refined: keeping this would invert
        elif high and level < HIGHEST and not self._sure(ordered, level, below=True):
            high, bar = False, 0.0  # keeping it would bind every later judge-high item
        elif not high and level > LOWEST and not self._sure(ordered, level, below=False):
            high, bar = True, 1.0  # refining it would bind every later judge-low item
        if high:
            state.lowest_kept = level if state.lowest_kept is None else min(
                state.lowest_kept, level)
        else:
            state.highest_refined = level if state.highest_refined is None else max(
                state.highest_refined, level)
        state.seen += 1
        state.high += high
        self._remember(state, key)
        return QuotaDecision(high=high, rank=rank, bar=bar)

    def _sure(self, ordered: list[RankKey], level: int, *, below: bool) -> bool:
        """Whether the window shows, beyond its noise, that the cluster's cut falls within
        ``level`` from below (keeping one of them is right: the higher levels make up less
        than ``k_ratio``) or from above (refining one is right: this level and the higher
        ones make up more than ``k_ratio``). Such a decision binds the cluster for good
        (the lexicographic invariant), so it waits for evidence; until then the item gets
        the side that binds nothing (judge-high kept, judge-low refined)."""
        n = len(ordered)
        if n == 0:
            return False
        start = bisect.bisect_left(ordered, (level + 1 if below else level, -math.inf))
        share = (n - start) / n
        margin = math.sqrt(share * (1.0 - share) / n) + 1.0 / n
        return share + margin < self.k_ratio if below else share - margin > self.k_ratio

    def _remember(self, state: _Cluster, key: RankKey) -> None:
        state.window.append(key)
        bisect.insort(state.ordered, key)
        if len(state.window) > self.window:
            old = state.window.popleft()
            del state.ordered[bisect.bisect_left(state.ordered, old)]

    def sizes(self) -> dict[int | None, tuple[int, int]]:
        """(items seen, of which high) per cluster."""
        return {c: (s.seen, s.high) for c, s in self._clusters.items()}
