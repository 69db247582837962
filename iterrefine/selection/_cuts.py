"""Per-cluster cuts: where each cluster's quota falls, from the trainer's recent items.

The trainer keeps the rank key (judge level, difficulty) of its recent vectors beside
them. After every fit it sorts each cluster's recent keys, descending, and records the
key of the last item the exact procedure would keep there (position
``round(k_ratio · n) − 1``): the paper's quota applied to the recent window. A new item
of that cluster ranking at or above the cut is high. Too few recent items (fewer than
``MIN_ITEMS``) give no cut: the route's running rank decides alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
from numpy.typing import NDArray

from iterrefine.selection.quota import HIGHEST

MIN_ITEMS: Final = 5
#: Cut level of a cluster without one; of a cluster where nothing is kept, above all.
NO_CUT: Final = 0
NOTHING_KEPT: Final = 3


def nearest_rows(centres: NDArray[np.floating], data: NDArray[np.floating]) -> NDArray[np.int_]:
    """The nearest centre's row of every vector (lowest row on a tie)."""
    norms = (centres**2).sum(axis=1)
    rows: NDArray[np.int_] = np.argmin(norms[None, :] - 2.0 * (data @ centres.T), axis=1)
    return rows


def high_share(keys: Sequence[tuple[int, float] | None]) -> float | None:
    """Share of judge-high items among the ``keys`` known (None: none known)."""
    levels = [key[0] for key in keys if key is not None]
    return sum(level == HIGHEST for level in levels) / len(levels) if levels else None


def cuts(
    centres: NDArray[np.floating], data: NDArray[np.floating],
    keys: Sequence[tuple[int, float] | None], k_ratio: float,
    rows_of_data: NDArray[np.int_] | None = None,
) -> tuple[list[int], list[float]]:
    """(cut level, cut difficulty) per centre row, from the recent ``data`` and ``keys``;
    ``rows_of_data``: ``nearest_rows(centres, data)`` (float64) if the caller has it."""
    levels = [NO_CUT] * len(centres)
    difficulties = [0.0] * len(centres)
    known = [i for i, key in enumerate(keys) if key is not None]
    if not known:
        return levels, difficulties
    if rows_of_data is not None and len(known) == len(data):
        # Every key is known: the same product the caller made (a subset is computed
        # afresh, so the rows stay exactly what it always gave).
        rows = rows_of_data
    else:
        rows = nearest_rows(np.asarray(centres, dtype=np.float64),
                            np.asarray(data[known], dtype=np.float64))
    members: dict[int, list[tuple[int, float]]] = {}
    for index, row in zip(known, rows.tolist(), strict=True):
        key = keys[index]
        assert key is not None
        members.setdefault(row, []).append(key)
    for row, found in members.items():
        if len(found) < MIN_ITEMS:
            continue
        ranked = sorted(found, reverse=True)
        highs = round(k_ratio * len(ranked))
        if highs == 0:
            levels[row] = NOTHING_KEPT
        else:
            levels[row], difficulties[row] = ranked[highs - 1]
    return levels, difficulties
