"""Lineage and the paper's policy choices: what an item records of how it was made.

The feedback set as its refine request sent it, the temperature each role sampled
at, the preset and the prompt version; the re-score keeping every field of the
judge's answer; and the task filter's setting for an answer that does not say
whether the item involves reasoning.
"""

from __future__ import annotations

from typing import Any

import pytest

from iterrefine.config import Config, load_config
from iterrefine.item.model import Evaluation, Item, Judgement, Provenance, Round, Scores
from iterrefine.tasks.prompts import PROMPT_VERSION
from iterrefine.testing import StageKit, make_item, only

from .scripted_answers import EVALUATION, HIGH, LOW, REVISION

pytestmark = pytest.mark.unit

REASONING = LOW.replace("Verdict: low", "Involves reasoning: yes\nVerdict: low")
NO_REASONING = HIGH.replace("Verdict: high", "Involves reasoning: no\nVerdict: high")
#: HIGH says nothing about reasoning: no "Involves reasoning" line.
UNSAID = HIGH
NINES = Scores(correctness=9, completeness=9, clarity=9, compliance=9, reasoning=9)
FOURS = Scores(correctness=4, completeness=4, clarity=4, compliance=4, reasoning=4)
SCORES_OF = {NO_REASONING: NINES, UNSAID: NINES, REASONING: FOURS}
INVOLVES = {NO_REASONING: False, UNSAID: None, REASONING: True}


def paper_config(**llm: Any) -> Config:
    """``preset = "paper"`` with the two roles configured (they take ``[llm_defaults]``)."""
    roles = {role: {"base_url": "http://models.invalid/v1", "model": f"m-{role}", **llm}
             for role in ("strong", "backbone")}
    return load_config(overrides={"preset": "paper", "llm": roles})


def test_the_paper_preset_rejects_unsaid_reasoning_and_does_not_rescore() -> None:
    """Under the preset: the task filter drops an unsaid answer; no re-score of refined items."""
    pipeline = paper_config().pipeline
    assert (pipeline.task_filter, pipeline.task_filter_unstated) == (True, "reject")
    assert pipeline.rescore_refined is False
    defaults = Config().pipeline
    assert (defaults.task_filter, defaults.task_filter_unstated) == (False, "keep")
    assert defaults.rescore_refined is True


@pytest.mark.parametrize(("answer", "unstated", "topic", "reason"), [
    (NO_REASONING, "keep", "items.rejected", "not_reasoning"),
    (NO_REASONING, "reject", "items.rejected", "not_reasoning"),
    (UNSAID, "keep", "items.scored", ""),
    (UNSAID, "reject", "items.rejected", "reasoning_unstated"),
    (REASONING, "reject", "items.scored", ""),
])
async def test_task_filter_handles_an_unsaid_answer_as_configured(
    answer: str, unstated: str, topic: str, reason: str
) -> None:
    """Task filter on: no reasoning is rejected; an answer that does not say is kept or
    rejected (``reasoning_unstated``) as ``task_filter_unstated`` says."""
    async with StageKit({"score": answer}, pipeline={
            "task_filter": True, "task_filter_unstated": unstated}) as kit:
        out = only(await kit.handle("score", make_item()))
    assert (out.topic, out.item.status_reason) == (topic, reason)
    assert out.item.status == ("rejected" if reason else "pending")
    expected = Judgement(usable=True, reason="fine", scores=SCORES_OF[answer],
                         verdict="low" if answer is REASONING else "high",
                         justification="solid", involves_reasoning=INVOLVES[answer])
    assert out.item.judgement == expected


async def test_task_filter_off_keeps_every_usable_item() -> None:
    """Filter off: neither "no" nor an unsaid answer rejects, whatever the unsaid setting."""
    for answer in (NO_REASONING, UNSAID):
        async with StageKit({"score": answer}, pipeline={"task_filter_unstated": "reject"}) as kit:
            assert only(await kit.handle("score", make_item())).topic == "items.scored"


async def test_rescore_keeps_every_field_of_the_judges_answer() -> None:
    """The re-score after alignment records the whole answer, the task filter's included."""
    async with StageKit({"align": "Output:\nHello there.", "score": NO_REASONING}) as kit:
        out = only(await kit.handle("align", make_item(instruction="Say hello politely.")))
    assert out.item.final_judgement == Judgement(
        usable=True, reason="fine", scores=NINES, verdict="high", justification="solid",
        involves_reasoning=False)


async def test_every_stage_stamps_temperature_preset_and_prompt_version() -> None:
    """Provenance: each role's temperature (as sent on the wire), the preset, the prompts."""
    async with StageKit({"score": REASONING}, config=paper_config()) as kit:
        out = only(await kit.handle("score", make_item()))
        (request,) = kit.requests
    provenance = out.item.provenance
    assert provenance.temperatures == {"strong": 0.6, "backbone": 0.6}
    assert request.body["temperature"] == 0.6
    assert (provenance.preset, provenance.prompt_version) == ("paper", PROMPT_VERSION)
    assert provenance.models == {"strong": "m-strong", "backbone": "m-backbone"}


async def test_a_later_stage_keeps_earlier_roles_and_takes_its_own_temperature() -> None:
    """Stamps merge: a role's newest temperature wins, roles stamped before are kept."""
    async with StageKit({"score": REASONING}, config=paper_config(temperature=0.2)) as kit:
        earlier = make_item(provenance=Provenance(
            temperatures={"strong": 0.9, "embedding": 0.0}, preset=None, prompt_version="old",
            models={"embedding": "e"}, simulated=False))
        out = only(await kit.handle("score", earlier))
    provenance = out.item.provenance
    assert provenance.temperatures == {"strong": 0.2, "backbone": 0.2, "embedding": 0.0}
    assert provenance.models["embedding"] == "e" and provenance.simulated
    assert (provenance.preset, provenance.prompt_version) == ("paper", PROMPT_VERSION)


def lost_round(explanation: str) -> Round:
    return Round(number=1, instruction="Say hello, take 1.", input="", feedback=None,
                 winner="A", explanation=explanation)


def after_a_lost_round(**changes: Any) -> Item:
    evaluation = Evaluation(backbone_answer="hi", score=5, text="partial")
    return make_item(quality="low", evaluation=evaluation, original_answer="hi", round=1,
                     rounds=(lost_round("B dropped the greeting."),),
                     feedback="B dropped the greeting.").with_changes(**changes)


async def test_an_unreadable_rewrite_records_the_feedback_set_it_was_sent() -> None:
    """Refine's own answer unreadable: the failed round records the feedback set sent."""
    async with StageKit({"refine": "no idea"}, pipeline={"parse_retries": 0}) as kit:
        out = only(await kit.handle("refine", after_a_lost_round()))
        (request,) = kit.script.of("refine")
    failed = out.item.rounds[-1]
    assert failed.revision_failed and out.topic == "items.refine"
    assert failed.feedback_set == ("B dropped the greeting.",) == tuple(request["feedback_set"])


async def test_an_unreadable_evaluation_records_no_feedback_set() -> None:
    """The evaluation unreadable: no refine request was sent, so no feedback set either."""
    async with StageKit({"answer": "hi", "evaluate": "???", "refine": REVISION},
                        pipeline={"parse_retries": 0}) as kit:
        out = only(await kit.handle("refine", after_a_lost_round(evaluation=None)))
        assert kit.script.count("refine") == 0
    failed = out.item.rounds[-1]
    assert failed.revision_failed and failed.feedback_set == ()
    assert "evaluate" in failed.explanation


async def test_the_feedback_set_on_the_round_is_the_one_sent() -> None:
    """A readable rewrite: its round records exactly the feedback set of its request."""
    async with StageKit({"answer": "hi", "evaluate": EVALUATION, "refine": REVISION},
                        pipeline={"feedback_max_chars": 10}) as kit:
        out = only(await kit.handle("refine", after_a_lost_round()))
        (request,) = kit.script.of("refine")
    assert out.item.rounds[-1].feedback_set == ("B dropped ",) == tuple(request["feedback_set"])
