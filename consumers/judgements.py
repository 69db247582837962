"""IQD — the item's record of the judge's answer, shared by score and align's re-score.

Both keep every field the judge gave (the task filter's answer included), so a
re-scored item can be compared with its first judgement field by field.
"""

from __future__ import annotations

from iterrefine.item.model import Judgement
from iterrefine.tasks.parsing import ScoreAnswer


def judgement_of(answer: ScoreAnswer) -> Judgement:
    """The item's record of a judge's answer: every field the answer gave."""
    return Judgement(
        usable=answer.usable,
        reason=answer.reason,
        scores=answer.scores,
        verdict=answer.verdict,
        justification=answer.justification,
        involves_reasoning=answer.involves_reasoning,
    )
