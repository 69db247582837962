"""Parts of ``iterrefine run``'s output that need more than a line: summary rows, the
cost cap's message, when to log progress."""

from __future__ import annotations

import argparse
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


#: ``run_progress`` events every this many seconds when stderr is not a terminal.
DEFAULT_PROGRESS_EVERY_S = 10.0


def progress_every_s(args: argparse.Namespace, terminal: bool) -> float | None:
    """``--progress-every-s``, else the default off a terminal (where no bar is drawn)."""
    if args.progress_every_s is not None:
        return args.progress_every_s if args.progress_every_s > 0 else None
    return None if terminal else DEFAULT_PROGRESS_EVERY_S


def cost_cap_message(cap: Mapping[str, Any]) -> str:
    return (f"iterrefine: stopped by the cost cap: {cap['money_at_stop']:,.4f} spent of "
            f"--max-cost {cap['max_cost']:,.4f} after {cap['items_done']} items; the items "
            "not finished are not in the output. Rerun the same command with a higher cap: "
            "answers already received are cached and cost nothing again. Exit code 4")
