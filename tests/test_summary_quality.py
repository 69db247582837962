"""The summary's judge scores compare like with like: refined items before → after."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from iterrefine.app._summary import build_summary
from iterrefine.cli._run_summary import quality_rows
from iterrefine.io.export import Terminal
from iterrefine.item.model import Item, Judgement, Original, Scores
from iterrefine.observe.metrics import Metrics


def _judged(mean: float) -> Judgement:
    scores = Scores(correctness=mean, completeness=mean, clarity=mean, compliance=mean,
                    reasoning=mean)
    return Judgement(usable=True, reason="r", scores=scores,
                     verdict="high" if mean >= 7 else "low", justification="j")


def _item(n: int, status: Any, before: float, after: float | None = None) -> Terminal:
    original = Original(instruction=f"i{n}", input="", output="o")
    item = Item(id=f"id{n}", original=original, instruction=original.instruction, input="",
                output="o", judgement=_judged(before), status=status,
                final_judgement=None if after is None else _judged(after))
    return Terminal(id=item.id, outcome="curated", revision=0, timestamp_ms=0, item=item,
                    meta={}, raw=b"")


@pytest.mark.unit
def test_refined_items_are_compared_with_themselves_and_kept_items_stand_apart() -> None:
    """9 high at 8, 3 refined 5 → 7, 1 unrefined at 4, 1 refined without a re-score."""
    terminals = [_item(n, "high", 8.0) for n in range(9)]
    terminals += [_item(10 + n, "refined", 5.0, 7.0) for n in range(3)]
    terminals += [_item(20, "unrefined", 4.0), _item(21, "refined", 3.0)]
    summary = build_summary(terminals, items_in=14, invalid_at_ingest=0, wall_time_s=1.0,
                            simulated=True, llm_stats={}, metrics=Metrics(CollectorRegistry()))
    quality = summary["quality"]
    # The old pair set all 14 items (mean 6.714) against the 3 re-scored ones (7.0):
    # refinement looked like +0.29 where it was +2 on the items it touched.
    assert quality["before"]["mean"] == 6.714 and quality["after"]["mean"] == 7.0
    assert quality["refined"] == {"count": 3, "before_mean": 5.0, "after_mean": 7.0,
                                  "change_mean": 2.0, "without_final_score": 1}
    assert quality["kept"] == {"high": {"count": 9, "mean": 8.0},
                               "unrefined": {"count": 1, "mean": 4.0}}
    rows = dict(quality_rows(quality))
    assert rows["judge score, refined (same items)"] == "3 items: 5.0 → 7.0 (+2.000)"
    assert rows["judge score, kept as is"] == "9 high 8.0, 1 unrefined 4.0"
    assert rows["refined, not re-scored"] == "1 items"
