"""The paper's selection as a batch procedure over a bounded set (``mode = "exact"``).

``KMeans(n_clusters=k, random_state=0)`` over every vector of the set, then in every
cluster ``round(k_ratio · n)`` items are high: judge-level-2 items first, then level 1,
each group by difficulty descending; the rest are low. For reproducing the paper on a
finished range of items and as the reference the streaming policy is measured against.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray


def exact_clusters(
    vectors: NDArray[np.floating], k: int, random_state: int = 0
) -> NDArray[np.int_]:
    """Cluster ids of ``vectors`` by scikit-learn's ``KMeans``, as the paper ran it."""
    from sklearn.cluster import KMeans  # imported on first use: ~0.5 s

    kmeans = KMeans(n_clusters=k, random_state=random_state, n_init="auto")
    labels: NDArray[np.int_] = kmeans.fit_predict(vectors)
    return labels


def exact_quota(
    clusters: Sequence[int], levels: Sequence[int], difficulties: Sequence[float], k_ratio: float
) -> list[bool]:
    """High (True) / low per item: the top ``round(k_ratio · n)`` of every cluster."""
    members: dict[int, list[int]] = {}
    for index, cluster in enumerate(clusters):
        members.setdefault(int(cluster), []).append(index)
    high = [False] * len(clusters)
    for indices in members.values():
        # Python's sort is stable: equal keys keep their input order, as pandas' did.
        ranked = sorted(indices, key=lambda i: (-levels[i], -difficulties[i]))
        for index in ranked[: round(k_ratio * len(indices))]:
            high[index] = True
    return high
