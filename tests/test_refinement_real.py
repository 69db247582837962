"""Refinement that is real or not claimed: an unchanged revision is not ``refined``, and a
revision that drops the context or copies the answer is refused before review.

The two refused cases are the ones Qwen2.5-0.5B produced on the Dolly sample (issue 27):
the Komorida item's 1,191-character context replaced by its one-line answer, and an
empty input filled with the answer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iterrefine.consumers.guards import revision_problem, unchanged
from iterrefine.item.model import Evaluation, Item
from iterrefine.testing import StageKit, make_item, only

SAMPLE = Path(__file__).parent.parent / "examples" / "dolly_sample.jsonl"
EVALUATION = Evaluation(backbone_answer="In 1981.", score=6, text="partial",
                        suggestions=("Ask for the full date.",))


def _dolly(row: int) -> dict[str, str]:
    record = json.loads(SAMPLE.read_text(encoding="utf-8").splitlines()[row])
    return {"instruction": record["instruction"], "input": record["input"],
            "output": record["output"]}


KOMORIDA = _dolly(0)
POLYGON = next(r for r in map(_dolly, range(20)) if r["instruction"] == "What is a polygon?")


def _evaluated(record: dict[str, str]) -> Item:
    return make_item(**record).with_changes(evaluation=EVALUATION, original_answer="In 1981.")


@pytest.mark.unit
def test_the_issues_two_broken_revisions_are_refused() -> None:
    """Context replaced by the answer, and an empty input filled with it: both refused."""
    assert len(KOMORIDA["input"]) == 1191 and POLYGON["input"] == ""
    dropped = revision_problem(KOMORIDA["instruction"], KOMORIDA["input"], KOMORIDA["output"],
                               KOMORIDA["instruction"], "Tomoaki Komorida was born on July "
                               "10,1981.")
    assert dropped is not None and "drops the item's input context" in dropped
    filled = revision_problem(POLYGON["instruction"], "", POLYGON["output"],
                              "Explain what a polygon is.", POLYGON["output"])
    assert filled is not None and "reference output" in filled


@pytest.mark.unit
def test_good_revisions_pass_the_structural_check() -> None:
    """Clarified instructions that keep the context (or move it) are not refused."""
    sharper = "When exactly was Tomoaki Komorida born? Give the full date."
    assert revision_problem(KOMORIDA["instruction"], KOMORIDA["input"], KOMORIDA["output"],
                            sharper, KOMORIDA["input"]) is None
    moved = f"{sharper}\n\nUse this passage:\n{KOMORIDA['input']}"
    assert revision_problem(KOMORIDA["instruction"], KOMORIDA["input"], KOMORIDA["output"],
                            moved, "") is None
    assert revision_problem(POLYGON["instruction"], "", POLYGON["output"],
                            "Define a polygon in geometry in two sentences.", "") is None


@pytest.mark.unit
def test_unchanged_ignores_whitespace_only() -> None:
    """A revision equal but for spacing is unchanged; a reworded one is not."""
    assert unchanged("Say  hi", "", " Say hi\n", "")
    assert not unchanged("Say hi", "", "Say hi politely", "")


@pytest.mark.unit
async def test_an_unchanged_revision_is_curated_unrefined_with_no_change() -> None:
    """The refiner gives the item back as it was: curated ``unrefined``, reason "no
    change", without paying for a review."""
    item = _evaluated(KOMORIDA)
    answer = f"instruction_new: {KOMORIDA['instruction']}\ninput_new: {KOMORIDA['input']}"
    async with StageKit({"refine": answer}) as kit:
        out = only(await kit.handle("refine", item))
        assert kit.script.count("review") == 0
    assert out.topic == "items.curated"
    assert out.item.status == "unrefined"
    assert out.item.status_reason.startswith("no change")
    assert out.item.instruction == KOMORIDA["instruction"]


@pytest.mark.unit
@pytest.mark.parametrize(("record", "revised_input"), [
    (KOMORIDA, "Tomoaki Komorida was born on July 10,1981."),
    (POLYGON, POLYGON["output"]),
])
async def test_a_broken_revision_loses_its_round_before_review(
    record: dict[str, str], revised_input: str,
) -> None:
    """Refused before review: the round is lost (requeued with the reason), the refused
    revision is marked failed so no policy ever aligns it."""
    answer = f"instruction_new: {record['instruction']} Answer briefly.\ninput_new: " \
        f"{revised_input}"
    async with StageKit({"refine": answer}) as kit:
        out = only(await kit.handle("refine", _evaluated(record)))
    assert out.topic == "items.refine"
    last = out.item.rounds[-1]
    assert last.revision_failed and last.explanation.startswith("refused before review")


@pytest.mark.unit
async def test_an_alignment_that_changes_nothing_is_not_refined() -> None:
    """Revision and output equal to the original after align: ``unrefined``, not
    ``refined``, and no re-score is paid for."""
    item = make_item(instruction="Name a colour.", output="Blue.").with_changes(
        instruction="Name a colour. ", converged=True)
    async with StageKit({"align": "Output: Blue."}) as kit:
        out = only(await kit.handle("align", item))
        assert kit.script.count("score") == 0
    assert out.item.status == "unrefined"
    assert "no change" in out.item.status_reason


@pytest.mark.unit
def test_a_dead_letter_of_an_unreadable_answer_carries_the_raw_answer() -> None:
    """The DLQ row of an unreadable answer has the task and the model's text itself."""
    from aiokafka.structs import ConsumerRecord

    from iterrefine.errors import UnparseableOutput
    from iterrefine.io.export import Terminal
    from iterrefine.runtime.dlq import dlq_headers, headers_dict

    record = ConsumerRecord("t.items.raw", 0, 7, 0, 0, b"id1", b"{}", None, 2, 2, [])
    exc = UnparseableOutput("score answer: no usable yes/no", task="score",
                            raw="Reasoning: Yes\nVerdict: high")
    headers = dlq_headers(record, stage="score", exc=exc, attempts=1, item=None)
    row = Terminal(id="id1", outcome="dlq", revision=0, timestamp_ms=0, item=None,
                   meta=headers_dict(headers), raw=b"{}").row()
    assert row["task"] == "score"
    assert row["raw_answer"] == "Reasoning: Yes\nVerdict: high"
    plain = dlq_headers(record, stage="score", exc=ValueError("x"), attempts=1, item=None)
    assert "raw_answer" not in Terminal(id="id1", outcome="dlq", revision=0, timestamp_ms=0,
                                        item=None, meta=headers_dict(plain), raw=b"").row()
