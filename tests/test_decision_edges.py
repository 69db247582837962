"""The decision code at its edges, with literal expectations: the guards' boundaries (each
constant exactly), the no-change ending of refine field by field, the fitted token limits
refine and align send, the exact quota's table and metrics, and where online scoring
sends an item.

Each test pins a behaviour a mutation of ``benchmarks/mutation.py`` showed no other
unit test held (a ``>=`` that could be ``>``, a field of the curated item nobody read).
"""

from __future__ import annotations

import dataclasses

import pytest

from iterrefine.config import KafkaConfig
from iterrefine.consumers.guards import revision_problem
from iterrefine.consumers.refine import NO_CHANGE, checked
from iterrefine.consumers.score import _quota_owner
from iterrefine.item.model import Evaluation, Item, Judgement, Round, Selection
from iterrefine.selection import DecisionTable
from iterrefine.selection import _records as records
from iterrefine.testing import StageKit, make_item, only

from .scripted_answers import HIGH

pytestmark = pytest.mark.unit

DROPS = ("it drops the item's input context: 0% of the input's words are left in the "
         "revision (at least 50% must stay)")
COPIES = "it copies the reference output into the instruction or input"


# --- guards: every boundary constant exactly ------------------------------------------

def test_an_input_of_exactly_forty_characters_is_context_the_revision_must_keep() -> None:
    """MIN_CONTEXT_CHARS = 40 is guarded: a 40-character input dropped is refused."""
    context = "elephants giraffes penguins dolphins zoo"
    assert len(context) == 40
    assert revision_problem("Sort these.", context, "Hello!", "Say hello politely.",
                            "") == DROPS


def test_half_of_the_inputs_words_kept_is_enough() -> None:
    """KEPT_SHARE = 0.5 is a floor, not a bar to pass: 2 of 4 words kept is fine, 1 is not."""
    context = "elephants, giraffes, penguins and dolphins."
    assert len(context) == 43
    assert revision_problem("Sort these.", context, "Hello!", "Sort these animals.",
                            "elephants giraffes") is None
    assert revision_problem("Sort these.", context, "Hello!", "Sort these animals.",
                            "elephants") == (
        "it drops the item's input context: 25% of the input's words are left in the "
        "revision (at least 50% must stay)")


def test_an_output_of_exactly_twenty_characters_copied_in_is_a_copy() -> None:
    """MIN_COPIED_CHARS = 20: the 20-character output in the revision is refused as a copy
    (its two content words alone would not count as a leak)."""
    output = "Paris is the capital"
    assert len(output) == 20
    assert revision_problem("Name the capital of France.", "", output,
                            "Name the capital of France.", output) == COPIES


def test_an_output_the_original_already_quoted_is_no_copy() -> None:
    """The copy rule is about bringing the output in: kept where the original had it, fine."""
    output = "Paris is the capital of France"
    context = f"Everyone knows that {output}, on the Seine."
    assert revision_problem("What does the passage say?", context, output,
                            "What does the passage say about Paris?", context) is None


def test_one_new_output_word_is_no_leak_even_at_half_the_output() -> None:
    """LEAKED_MIN and LEAKED_SHARE both must hold: 1 of 2 output words new is not a leak."""
    assert revision_problem("Name the capital of France.", "", "Paris, capital.",
                            "Is Paris the capital of France?", "") is None


def test_exactly_three_new_output_words_at_three_quarters_are_a_leak() -> None:
    """LEAKED_MIN = 3 is reached at 3 words."""
    assert revision_problem("Which city is the capital?", "", "Rome, Lazio, Tiber, Italy.",
                            "Which city in Italy, in Lazio on the Tiber, is the capital?",
                            "") == (
        "it puts the reference output into the instruction or input: 3 of the output's 4 "
        "words are new in the revision")


def test_exactly_half_of_the_output_words_new_is_a_leak() -> None:
    """LEAKED_SHARE = 0.5 is reached at one half: 3 of 6 words."""
    assert revision_problem("Which city is the capital?", "",
                            "Rome, Lazio, Tiber, Italy, Europe, Vatican.",
                            "Which city in Italy, in Lazio on the Tiber, is the capital?",
                            "") == (
        "it puts the reference output into the instruction or input: 3 of the output's 6 "
        "words are new in the revision")


def test_three_new_output_words_under_half_of_the_output_are_no_leak() -> None:
    """3 of 8 output words (37.5%) new: below the share, not refused."""
    assert revision_problem("Which city is the capital?", "",
                            "Rome, Lazio, Tiber, Italy, Europe, Vatican, Colosseum, Forum.",
                            "Which city in Italy, in Lazio on the Tiber, is the capital?",
                            "") is None


# --- refine: the no-change ending, the refused revision, the revision sent on ----------

FEEDBACK = "The revision lost: it asked for less."


def _in_round_two() -> Item:
    """An item in its second round whose current fields are not the original's (a lost
    round before, converged claimed), so resetting them to the original shows."""
    lost = Round(number=1, instruction="Say hi.", input="", feedback=None, winner="A",
                 explanation=FEEDBACK)
    return make_item(instruction="Say hello", input="", output="Hello!").with_changes(
        instruction="Say hi.", input="to the team", output="Hi!", converged=True,
        feedback=FEEDBACK, round=1, rounds=(lost,),
        evaluation=Evaluation(backbone_answer="Hi", score=5, text="terse", suggestions=()))


async def test_a_revision_equal_to_the_original_curates_the_original_unrefined() -> None:
    """Round 2 returns the original (whitespace aside): curated ``unrefined`` with outcome
    ``unchanged``, the original's fields back, not converged, no feedback, round 2 recorded
    with the reason as its explanation."""
    item = _in_round_two()
    async with StageKit() as kit:
        out = checked(kit.ctx, item, 2, " Say  hello\n", "", (FEEDBACK,))
    assert (out.topic, out.outcome) == ("items.curated", "unchanged")
    kept = out.item
    assert NO_CHANGE == ("no change: the refiner returned the instruction and input "
                         "unchanged")
    assert (kept.status, kept.status_reason) == ("unrefined", NO_CHANGE)
    assert (kept.instruction, kept.input, kept.output) == ("Say hello", "", "Hello!")
    assert kept.converged is False
    assert kept.feedback is None
    assert kept.round == 2
    assert kept.rounds == (item.rounds[0], Round(
        number=2, instruction=" Say  hello\n", input="", feedback=FEEDBACK,
        feedback_set=(FEEDBACK,), explanation=NO_CHANGE))


async def test_a_refused_revision_loses_its_own_round_with_the_reason_as_feedback() -> None:
    """A copied answer is refused: the item is requeued at round 1 (the round it lost),
    the refusal is its feedback and the round's explanation."""
    item = make_item(instruction="Name the capital of France.", output="Paris is the capital")
    async with StageKit() as kit:
        out = checked(kit.ctx, item, 1, "Name the capital of France.", "Paris is the capital")
    assert (out.topic, out.outcome) == ("items.refine", "requeued")
    assert out.item.round == 1
    assert out.item.feedback == f"refused before review: {COPIES}"
    last = out.item.rounds[-1]
    assert (last.number, last.revision_failed, last.explanation) == (
        1, True, f"refused before review: {COPIES}")


async def test_context_moved_into_the_revised_instruction_goes_to_review() -> None:
    """The guard reads the revised instruction too: the whole context moved there (input
    left empty) keeps it, and the revision is reviewed."""
    context = "elephants, giraffes, penguins and dolphins."
    item = make_item(instruction="Sort these.", input=context, output="Hello!")
    async with StageKit() as kit:
        out = checked(kit.ctx, item, 1, f"Sort these animals by size: {context}", "")
    assert (out.topic, out.outcome_label) == ("items.review", "review")
    assert out.item.round == 1
    assert out.item.rounds[-1].instruction == f"Sort these animals by size: {context}"


async def test_refine_asks_with_a_limit_fitted_to_the_item() -> None:
    """fit_max_tokens (default on): refine's limit is 512 + 3 × the tokens of instruction
    and input — "Say hello" is 9 characters, 3 tokens, so 521, not the configured 4096."""
    item = make_item(instruction="Say hello", output="Hello!").with_changes(
        evaluation=Evaluation(backbone_answer="Hi", score=5, text="terse", suggestions=()))
    async with StageKit({"refine": "instruction_new: Say hello politely.\ninput_new:"}) as kit:
        out = only(await kit.handle("refine", item))
    assert out.topic == "items.review"
    assert [r.max_tokens for r in kit.requests if r.task == "refine"] == [521]


async def test_refine_asks_with_the_configured_limit_when_fitting_is_off() -> None:
    item = make_item(instruction="Say hello", output="Hello!").with_changes(
        evaluation=Evaluation(backbone_answer="Hi", score=5, text="terse", suggestions=()))
    async with StageKit({"refine": "instruction_new: Say hello politely.\ninput_new:"},
                        pipeline={"fit_max_tokens": False}) as kit:
        await kit.handle("refine", item)
    assert [r.max_tokens for r in kit.requests if r.task == "refine"] == [4096]


# --- align: fitted limit, and a no-change reason added to the one the item had ----------

async def test_align_asks_with_a_limit_fitted_to_the_output() -> None:
    """Anchored: 512 + 3 × the original output's tokens ("Hello!": 6 characters, 2)."""
    item = make_item(instruction="Say hello", output="Hello!").with_changes(
        instruction="Say hello politely.", converged=True)
    async with StageKit({"align": "Output: Hello there, kindly!"}) as kit:
        out = only(await kit.handle("align", item))
    assert (out.item.status, out.item.output) == ("refined", "Hello there, kindly!")
    assert [r.max_tokens for r in kit.requests if r.task == "align"] == [518]


async def test_an_exhausted_item_aligned_to_no_change_keeps_both_reasons() -> None:
    """An item that had a reason (exhausted) and ends as the original: the reasons are
    joined with "; "."""
    exhausted = "exhausted: no revision won in 3 rounds; last revision (round 2) aligned"
    item = make_item(instruction="Name a colour.", output="Blue.").with_changes(
        instruction="Name a colour. ", converged=False, status_reason=exhausted)
    async with StageKit({"align": "Output: Blue."}) as kit:
        out = only(await kit.handle("align", item))
    assert out.item.status == "unrefined"
    assert out.item.status_reason == (
        "exhausted: no revision won in 3 rounds; last revision (round 2) aligned; "
        "no change: instruction, input and output equal the original")


# --- route: the exact quota reads the run's table and records its metrics --------------

async def test_exact_routing_takes_the_runs_decision_and_counts_it() -> None:
    """With the run's decisions, cluster_quota routes by the table (position 0 of 5 with 4
    highs: high) and counts the item and the cluster's high share (4/5)."""
    judged = Judgement(usable=True, reason="", scores=None, verdict="low", justification="")
    item = make_item(judgement=judged)
    table = DecisionTable(KafkaConfig(), "127.0.0.1:1", "run-1")
    table._offer(records.encode(records.Decision(run="run-1", id=item.id, cluster=4,
                                                 position=0, size=5, highs=4, k=7)))
    async with StageKit(pipeline={"routing_policy": "cluster_quota"}) as kit:
        kit._ctx = dataclasses.replace(kit.ctx, decisions=table)
        out = only(await kit.handle("route", item))
        registry = kit.metrics.registry
    assert (out.topic, out.item.quality) == ("items.curated", "high")
    assert out.item.selection is not None and out.item.selection.rule == "exact"
    assert registry.get_sample_value("iterrefine_selection_items_total",
                                     {"cluster": "4", "quality": "high"}) == 1.0
    assert registry.get_sample_value("iterrefine_selection_high_share",
                                     {"cluster": "4"}) == 0.8


# --- score: where an online item goes --------------------------------------------------

@pytest.mark.parametrize(("selection", "owner"), [
    (None, None),
    (Selection(cluster=5, mode="online"), 5),
    (Selection(cluster=0, mode="online"), 0),
    (Selection(cluster=None, mode="online"), 0),  # warm-up: one pseudo-cluster, owner 0
    (Selection(cluster=5, mode="exact"), None),
    (Selection(cluster=5), None),
])
def test_the_quota_owner_is_the_online_cluster(selection: Selection | None,
                                                owner: int | None) -> None:
    assert _quota_owner(make_item(selection=selection)) == owner


class _Placed:
    """A selector that places every item in online cluster 7 (no model, no server)."""

    async def annotate(self, item: Item) -> Item:
        return item.with_changes(selection=Selection(cluster=7, mode="online"))


async def test_online_scoring_sends_the_item_to_its_clusters_partition() -> None:
    async with StageKit({"score": HIGH}) as kit:
        kit._ctx = dataclasses.replace(kit.ctx, selector=_Placed())
        out = only(await kit.handle("score", make_item()))
    assert (out.topic, out.outcome_label, out.partition_by) == ("items.scored", "scored", 7)
