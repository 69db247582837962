"""The paper's selection as a batch procedure over a bounded set (``mode = "exact"``).

``KMeans(n_clusters=k, random_state=0)`` over every vector of the set, then in every
cluster ``round(k_ratio · n)`` items are high: judge-level-2 items first, then level 1,
each group by difficulty descending; the rest are low (with the paper's 0.8, clusters of
1–2 items keep everything: ``round(0.8) = 1``, ``round(1.6) = 2``). ``iterrefine run``
applies it behind a barrier at route (:mod:`iterrefine.selection.barrier`); it is also
the reference the online mode is measured against (``benchmarks/selection.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


def exact_clusters(
    vectors: NDArray[np.floating], k: int, random_state: int = 0, *, in_place: bool = False
) -> NDArray[np.int_]:
    """Cluster ids of ``vectors`` by scikit-learn's ``KMeans``, as the paper ran it.

    ``in_place``: a writable (memory-mapped) float32 matrix is used as it is rather than
    copied into RAM; KMeans centres it and restores it afterwards. The labels are the
    same either way (the same arithmetic on the same floats).
    """
    from sklearn.cluster import KMeans  # imported on first use: ~0.5 s

    kmeans = KMeans(n_clusters=k, random_state=random_state, n_init="auto",
                    copy_x=not in_place)
    labels: NDArray[np.int_] = kmeans.fit_predict(vectors)
    return labels


@dataclass(frozen=True, slots=True)
class ExactDecision:
    """One item's place in the exact quota: high iff ``position < highs``."""

    cluster: int
    #: 0-based place in the cluster's ranking by (judge level, difficulty), descending.
    position: int
    #: Items in the cluster, and how many of them are high (``round(k_ratio · size)``).
    size: int
    highs: int

    @property
    def high(self) -> bool:
        return self.position < self.highs


def exact_decisions(
    clusters: Sequence[int], levels: Sequence[int], difficulties: Sequence[float], k_ratio: float
) -> list[ExactDecision]:
    """Every item's place in its cluster's top ``round(k_ratio · n)`` (the paper's split)."""
    members: dict[int, list[int]] = {}
    for index, cluster in enumerate(clusters):
        members.setdefault(int(cluster), []).append(index)
    found: list[ExactDecision | None] = [None] * len(clusters)
    for cluster, indices in members.items():
        # Python's sort is stable: equal keys keep their input order, as the paper's did.
        ranked = sorted(indices, key=lambda i: (-levels[i], -difficulties[i]))
        highs = round(k_ratio * len(indices))
        for position, index in enumerate(ranked):
            found[index] = ExactDecision(cluster, position, len(indices), highs)
    return [decision for decision in found if decision is not None]


def exact_quota(
    clusters: Sequence[int], levels: Sequence[int], difficulties: Sequence[float], k_ratio: float
) -> list[bool]:
    """High (True) / low per item: the top ``round(k_ratio · n)`` of every cluster."""
    return [d.high for d in exact_decisions(clusters, levels, difficulties, k_ratio)]


def effective_k(survivors: int, k: int, min_cluster_items: int) -> int:
    """The k an exact run uses: ``k``, lowered on a small input (docs/paper.md says why).

    k-means needs at least ``k`` vectors, and with clusters of a handful of items the
    quota stops being one (rounding and the keep-everything clusters of 1–2 items hold
    most items high: 162 of 169 in the paper's own run). So k is lowered to
    ``survivors // min_cluster_items`` when that is smaller; 1 keeps the paper's k
    whenever k-means can run it.
    """
    if survivors <= 0:
        return 0
    return max(1, min(k, survivors // min_cluster_items, survivors))
