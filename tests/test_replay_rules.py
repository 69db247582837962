"""Replay rules of the stages (each ``SPEC.reset``): what replaying an item into a stage
clears, keeps and refuses. A finished item with every field set is replayed into each
stage; the expected item is written out field by field."""

from __future__ import annotations

import msgspec
import pytest

from iterrefine.consumers import align, refine, review, route, score
from iterrefine.errors import ValidationError
from iterrefine.item.model import Evaluation, Item, Judgement, Round, Scores
from iterrefine.testing import make_item

pytestmark = pytest.mark.unit

SCORES = Scores(correctness=6, completeness=5, clarity=7, compliance=6, reasoning=4)
JUDGEMENT = Judgement(usable=True, reason="a real task", scores=SCORES, verdict="low",
                      justification="thin", involves_reasoning=True)


def lost(number: int, explanation: str) -> Round:
    return Round(number=number, instruction=f"Which is a string instrument, round {number}?",
                 input=f"context {number}", feedback=None, backbone_answer="Panduri.",
                 winner="A", explanation=explanation, feedback_set=("earlier",))


def finished(last_winner: str = "B", **changes: object) -> Item:
    """An item at the end of the pipeline: every field a stage writes is set."""
    item = make_item(instruction="Identify which instrument is string or woodwind: Panduri, "
                     "Zurna", output="Zurna is woodwind, Panduri is string.")
    last = msgspec.structs.replace(lost(3, "B is clearer."), winner=last_winner,
                                   feedback="B drops a name.")
    fields: dict[str, object] = dict(
        revision=3, status="refined", status_reason="some reason", output_aligned=True,
        final_judgement=JUDGEMENT, instruction=last.instruction, input=last.input,
        output="The Panduri is a string instrument; the Zurna a woodwind.",
        converged=last_winner in ("B", "Tie"), alignment_mode="complete",
        judgement=JUDGEMENT, quality="low", original_answer="Panduri: string.",
        evaluation=Evaluation(backbone_answer="Panduri: string.", score=7, text="ok"),
        round=3, rounds=(lost(1, "A keeps the names."), lost(2, "B drops a name."), last),
        feedback="a stale explanation")
    return item.with_changes(**{**fields, **changes})


def pending_original(item: Item, revision: int) -> dict[str, object]:
    """The fields every replay resets (reentry.fresh)."""
    original = item.original
    return {"revision": revision, "status": "pending", "status_reason": "",
            "output_aligned": False, "final_judgement": None,
            "instruction": original.instruction, "input": original.input,
            "output": original.output, "converged": None, "alignment_mode": None}


def no_refinement() -> dict[str, object]:
    return {"evaluation": None, "original_answer": None, "round": 0, "rounds": (),
            "feedback": None}


def test_replay_into_score_only_takes_the_new_revision() -> None:
    """Score starts from the original: the replayed item differs only in its revision."""
    item = finished()
    assert score.SPEC.reset(item, 9) == item.with_changes(revision=9)


def test_replay_into_route_clears_refinement_and_quality() -> None:
    """Route: a scored, usable item, pending, with no trace of refinement or quality."""
    item = finished()
    expected = item.with_changes(**pending_original(item, 9), **no_refinement(), quality=None)
    assert route.SPEC.reset(item, 9) == expected


@pytest.mark.parametrize(("judgement", "reason", "message"), [
    (None, "not_scored", "the item was never scored"),
    (msgspec.structs.replace(JUDGEMENT, usable=False), "unusable",
     "the judge found the item unusable"),
])
def test_replay_into_route_refuses_unscored_and_unusable_items(
    judgement: Judgement | None, reason: str, message: str
) -> None:
    """Route refuses what scoring never let through, saying why."""
    with pytest.raises(ValidationError) as raised:
        route.SPEC.reset(finished(judgement=judgement), 9)
    assert (raised.value.reason, str(raised.value)) == (reason, message)


def test_replay_into_refine_starts_refinement_over() -> None:
    """Refine: pending, original fields back, round 0 with no rounds, evaluation or feedback."""
    item = finished()
    expected = item.with_changes(**pending_original(item, 9), **no_refinement())
    assert refine.SPEC.reset(item, 9) == expected


def test_replay_into_review_judges_the_last_revision_again() -> None:
    """Review: the last round's verdict is cleared; its revision and feedback are kept."""
    item = finished()
    first, second, last = item.rounds
    pending_last = msgspec.structs.replace(last, backbone_answer="", winner="none",
                                           explanation="")
    expected = item.with_changes(**pending_original(item, 9),
                                 rounds=(first, second, pending_last), round=3,
                                 feedback="B drops a name.")
    assert review.SPEC.reset(item, 9) == expected


def test_replay_into_review_refuses_an_item_without_a_revision() -> None:
    """Review: nothing to judge is a clear error (no_revision)."""
    with pytest.raises(ValidationError) as raised:
        review.SPEC.reset(finished(rounds=(), round=0), 9)
    assert (raised.value.reason, str(raised.value)) == (
        "no_revision", "the item has no revision to review")


@pytest.mark.parametrize("winner", ["B", "Tie"])
def test_replay_into_align_realigns_a_winning_revision(winner: str) -> None:
    """Align: the revision that won or tied becomes current again, converged."""
    item = finished(winner)
    last = item.rounds[-1]
    expected = item.with_changes(**{**pending_original(item, 9), "instruction": last.instruction,
                                    "input": last.input, "converged": True}, feedback=None)
    assert align.SPEC.reset(item, 9) == expected


def test_replay_into_align_realigns_a_kept_last_revision_and_says_it_never_won() -> None:
    """Align, keep_last_revision: the last readable revision, converged False, with why."""
    failed = Round(number=4, instruction="Identify", input="", feedback=None,
                   revision_failed=True)
    item = finished("A", converged=False)
    item = item.with_changes(rounds=(*item.rounds, failed), round=4)
    kept = item.rounds[2]
    expected = item.with_changes(**{
        **pending_original(item, 9), "instruction": kept.instruction, "input": kept.input,
        "converged": False,
        "status_reason": "exhausted: no revision won in 4 rounds; last revision (round 3) "
                         "aligned"}, feedback=None)
    assert align.SPEC.reset(item, 9) == expected


@pytest.mark.parametrize("changes", [
    {"converged": None},  # still refining: never exhausted
    {"converged": False, "rounds": (), "round": 0},  # never refined at all
    {"converged": False, "status": "unrefined"},  # the original was kept, nothing aligned
    {"converged": False, "rounds": (Round(number=1, instruction="x", input="", feedback=None,
                                          revision_failed=True),)},
])
def test_replay_into_align_refuses_a_revision_that_never_won(changes: dict[str, object]) -> None:
    """Align refuses an item with no winning, or kept-and-aligned, revision (not_converged)."""
    with pytest.raises(ValidationError) as raised:
        align.SPEC.reset(finished("A", **changes), 9)
    assert (raised.value.reason, str(raised.value)) == (
        "not_converged", "no revision of the item won its review")
