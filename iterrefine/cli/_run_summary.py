"""Rows of ``iterrefine run``'s summary table that need more than one line of wording."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def quality_rows(quality: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Judge scores like for like: refined items before → after, kept items apart."""
    refined = quality.get("refined")
    if refined is None:  # a summary written before these keys existed
        return [("judge score mean", f"before {quality['before']['mean']}, "
                 f"after refinement {quality['after']['mean']}")]
    rows = []
    if refined["count"]:
        rows.append(("judge score, refined (same items)", (
            f"{refined['count']} items: {refined['before_mean']} → {refined['after_mean']} "
            f"({refined['change_mean']:+.3f})")))
    if refined["without_final_score"]:
        rows.append(("refined, not re-scored", f"{refined['without_final_score']} items"))
    kept = quality["kept"]
    parts = [f"{row['count']} {status} {row['mean']}" for status, row in kept.items()
             if row["count"]]
    rows.append(("judge score, kept as is", ", ".join(parts) or "-"))
    return rows
