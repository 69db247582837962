"""Stage decisions (consumers/), in-process through iterrefine.testing.StageKit.

The kit builds each stage on a real context whose LLM roles are the real LLMClient
over an in-process transport; the script answers per task (read from the prompt's tag
line), so each test states what the models say and checks where the item goes next.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import msgspec
import pytest

from iterrefine.app._summary import truncated_by_task
from iterrefine.consumers.refine import feedback_set
from iterrefine.errors import TruncatedOutput, UnparseableOutput
from iterrefine.item.model import Evaluation, Item, Judgement, Round, Scores
from iterrefine.tasks.prompts import PROMPT_VERSION
from iterrefine.testing import Answer, Reply, ScriptedRequest, StageKit, make_item, only

from .scripted_answers import EVALUATION, HIGH, REVISION, UNUSABLE

pytestmark = pytest.mark.unit

MakeKit = Callable[..., Awaitable[StageKit]]


def cut_off_below(limit: int, text: str) -> Callable[[ScriptedRequest], str | Reply]:
    """Answers ``text`` when allowed at least ``limit`` tokens, else its first half, cut off."""
    def answer(request: ScriptedRequest) -> str | Reply:
        allowed = request.max_tokens or 0
        return text if allowed >= limit else Reply(text[: len(text) // 2], "length")
    return answer


@pytest.fixture
async def make_kit() -> AsyncIterator[MakeKit]:
    """``await make_kit(answers, **pipeline)``: a started StageKit, closed after the test."""
    async with AsyncExitStack() as stack:

        async def build(answers: dict[str, Answer], **pipeline: Any) -> StageKit:
            return await stack.enter_async_context(StageKit(answers, pipeline=pipeline))

        yield build


def an_item(**changes: Any) -> Item:
    return make_item(**changes)


def in_review(round_number: int = 1) -> Item:
    evaluation = Evaluation(backbone_answer="hi", score=5, text="partial", suggestions=("x",))
    current = Round(number=round_number, instruction="Say hello politely.", input="",
                    feedback=None)
    return an_item(quality="low", evaluation=evaluation, original_answer="hi",
                   round=round_number, rounds=(current,))


async def test_score_keeps_usable_items_with_their_judgement(make_kit: MakeKit) -> None:
    """A usable item goes to items.scored with per-dimension scores and provenance."""
    kit = await make_kit({"score": HIGH})
    out = only(await kit.handle("score", an_item()))
    assert out.topic == "items.scored"
    assert out.item.judgement is not None and out.item.judgement.scores is not None
    assert out.item.judgement.scores.mean == 9
    assert out.item.provenance.prompt_version == PROMPT_VERSION


async def test_score_rejects_unusable_items_with_the_reason(make_kit: MakeKit) -> None:
    """An unusable item goes to items.rejected carrying the judge's reason."""
    kit = await make_kit({"score": UNUSABLE})
    out = only(await kit.handle("score", an_item()))
    assert out.topic == "items.rejected"
    assert out.item.status == "rejected" and "unrelated" in out.item.status_reason


async def test_score_unparseable_raises_for_the_dlq_after_reasks(make_kit: MakeKit) -> None:
    """An unreadable judge answer is re-asked twice, then raised (DLQ reason set)."""
    kit = await make_kit({"score": "I cannot decide."})
    with pytest.raises(UnparseableOutput) as info:
        await kit.handle("score", an_item())
    assert info.value.reason == "unparseable_judge_output"
    assert kit.script.count("score") == 3


@pytest.mark.parametrize(("mean", "verdict", "topic"), [
    (9.0, "high", "items.curated"),
    (6.0, "high", "items.refine"),
    (9.0, "low", "items.refine"),
])
async def test_route_threshold_policy(make_kit: MakeKit, mean: float, verdict: str,
                                      topic: str) -> None:
    """High iff the judge says high and the mean score reaches the bar (7 by default)."""
    kit = await make_kit({})
    scores = Scores(correctness=mean, completeness=mean, clarity=mean, compliance=mean,
                    reasoning=mean)
    judged = an_item(judgement=Judgement(usable=True, reason="", scores=scores,
                                         verdict=verdict, justification=""))  # type: ignore[arg-type]
    out = only(await kit.handle("route", judged))  # inline: a plain function
    assert out.topic == topic


async def test_refine_evaluates_once_then_sends_the_revision_to_review(make_kit: MakeKit) -> None:
    """First refine: backbone answer + grade, then the rewrite goes to review as round 1."""
    kit = await make_kit({"answer": "hello", "evaluate": EVALUATION,
                                  "refine": REVISION})
    out = only(await kit.handle("refine", an_item(quality="low")))
    assert out.topic == "items.review"
    assert out.item.round == 1 and out.item.rounds[0].instruction == "Say hello politely."
    assert out.item.evaluation is not None and out.item.evaluation.score == 5
    assert out.item.original_answer == "hello"
    assert [r.task for r in kit.requests] == ["answer", "evaluate", "refine"]


async def test_review_win_converges_to_align(make_kit: MakeKit) -> None:
    """B wins: the revision becomes current and the item goes to align."""
    kit = await make_kit({"answer": "Hello there!",
                             "review": "Winner: B\nExplanation: clearer."})
    out = only(await kit.handle("review", in_review()))
    assert out.topic == "items.align"
    assert out.item.instruction == "Say hello politely."
    assert out.item.rounds[-1].winner == "B" and out.item.rounds[-1].backbone_answer


async def test_review_loss_requeues_with_the_explanation(make_kit: MakeKit) -> None:
    """A wins before the limit: back to refine with the judge's explanation as feedback."""
    kit = await make_kit({"answer": "hi",
                             "review": "Winner: A\nExplanation: B lost the context."})
    out = only(await kit.handle("review", in_review(1)))
    assert out.topic == "items.refine" and out.outcome == "requeued"
    assert out.item.feedback == "B lost the context."


def lost_round(number: int, explanation: str) -> Round:
    return Round(number=number, instruction=f"Say hello, take {number}.", input="",
                 feedback=None, winner="A", explanation=explanation)


async def test_round_two_refine_request_carries_the_feedback(make_kit: MakeKit) -> None:
    """From round 2 on, the refine request includes the reviewer's feedback."""
    kit = await make_kit({"refine": REVISION})
    lost = in_review(1).with_changes(rounds=(lost_round(1, "B lost the context."),),
                                     feedback="B lost the context.")
    await kit.handle("refine", lost)
    (request,) = kit.script.of("refine")
    assert "B lost the context." in request.user
    assert "Round: 2" in request.user


async def test_refine_gets_the_backbone_answer_and_every_earlier_feedback(
    make_kit: MakeKit,
) -> None:
    """Round 3 refine: backbone answer, and both earlier losses' explanations, oldest first."""
    kit = await make_kit({"refine": REVISION})
    item = in_review(2).with_changes(
        rounds=(lost_round(1, "first critique"), lost_round(2, "second critique")),
        feedback="second critique")
    await kit.handle("refine", item)
    (request,) = kit.script.of("refine")
    data = request.data
    assert data["backbone_answer"] == "hi"
    assert data["feedback_set"] == ["first critique", "second critique"]
    assert data["instruction"] == "Say hello"  # every round revises the original


async def test_first_refine_has_no_feedback_set(make_kit: MakeKit) -> None:
    """Round 1 refine sends the backbone's answer and no feedback set."""
    kit = await make_kit({"answer": "Hello.", "evaluate": EVALUATION,
                                  "refine": REVISION})
    await kit.handle("refine", an_item(quality="low"))
    (request,) = kit.script.of("refine")
    data = request.data
    assert data["backbone_answer"] == "Hello." and "feedback_set" not in data


def test_feedback_set_is_bounded_keeping_the_newest() -> None:
    """The feedback set keeps the newest explanations that fit, oldest first; skips non-losses."""
    item = an_item(rounds=(
        lost_round(1, "a" * 50), lost_round(2, "b" * 50),
        Round(number=3, instruction="x", input="", feedback=None, winner="none",
              explanation="the review answer could not be read"),
        lost_round(4, "c" * 50),
    ))
    assert feedback_set(item, max_entries=5, max_chars=120) == ["b" * 50, "c" * 50]
    assert feedback_set(item, max_entries=1, max_chars=1000) == ["c" * 50]
    assert feedback_set(item, max_entries=5, max_chars=20) == ["c" * 20]


@pytest.mark.parametrize(("policy", "topic", "status"), [
    ("keep_original", "items.curated", "unrefined"),
    ("drop", "items.rejected", "dropped"),
])
async def test_review_loss_at_the_limit_follows_the_policy(
    make_kit: MakeKit, policy: str, topic: str, status: str
) -> None:
    """A loss in the last round: keep the original (curated) or drop (rejected)."""
    kit = await make_kit({"answer": "hi",
                             "review": "Winner: A\nExplanation: worse."},
                            max_rounds=3, exhausted_policy=policy)
    out = only(await kit.handle("review", in_review(3)))
    assert (out.topic, out.item.status, out.outcome) == (topic, status, "exhausted")
    if policy == "keep_original":
        assert out.item.instruction == "Say hello"


async def test_unreadable_review_counts_as_a_lost_round(make_kit: MakeKit) -> None:
    """An unparseable verdict is not a crash: the round is lost and the item requeued."""
    kit = await make_kit({"answer": "hi", "review": "Both are nice."})
    out = only(await kit.handle("review", in_review(1)))
    assert out.topic == "items.refine"
    assert out.item.rounds[-1].winner == "none"


async def test_position_swap_needs_the_revision_to_win_both_orders(make_kit: MakeKit) -> None:
    """With position swap, B wins first but loses swapped: the round is lost."""
    verdicts = iter(["Winner: B\nExplanation: first.", "Winner: B\nExplanation: swapped."])
    kit = await make_kit({"answer": "hi",
                                  "review": lambda _request: next(verdicts)}, position_swap=True)
    out = only(await kit.handle("review", in_review(1)))
    # Swapped order put the revision in position A; "B" there means the original won.
    assert out.topic == "items.refine"
    assert kit.script.count("review") == 2


async def test_align_rewrites_the_output_and_rescores(make_kit: MakeKit) -> None:
    """Align: the output answers the revision; the judge re-scores the refined item."""
    kit = await make_kit({"align": "Output:\nHello, nice to meet you!",
                             "score": HIGH})
    converged = in_review(1).with_changes(instruction="Say hello politely.")
    out = only(await kit.handle("align", converged))
    assert out.topic == "items.curated" and out.item.status == "refined"
    assert out.item.output == "Hello, nice to meet you!" and out.item.output_aligned
    assert out.item.final_judgement is not None


async def test_align_unparseable_keeps_the_original_output(make_kit: MakeKit) -> None:
    """An unreadable alignment keeps the original output and says so."""
    kit = await make_kit({"align": "", "score": "???"})
    out = only(await kit.handle("align", in_review(1)))
    assert out.topic == "items.curated"
    assert out.item.output == "Hello!" and not out.item.output_aligned
    assert "align_unparseable" in out.item.status_reason
    assert out.item.final_judgement is None  # the optional re-score failed quietly


async def test_keep_last_revision_sends_the_last_revision_to_align(make_kit: MakeKit) -> None:
    """keep_last_revision: a loss at the limit aligns the last revision, marked unconverged."""
    kit = await make_kit({"answer": "hi",
                             "review": "Winner: A\nExplanation: worse."},
                            max_rounds=3, exhausted_policy="keep_last_revision")
    out = only(await kit.handle("review", in_review(3)))
    assert (out.topic, out.outcome) == ("items.align", "exhausted")
    assert out.item.instruction == "Say hello politely." and out.item.converged is False
    assert "no revision won in 3 rounds" in out.item.status_reason
    assert out.item.rounds[-1].winner == "A"


async def test_keep_last_revision_skips_an_unreadable_last_revision(make_kit: MakeKit) -> None:
    """An unreadable refine in the last round: the newest readable revision is aligned."""
    kit = await make_kit({"refine": "no idea"},
                            max_rounds=2, exhausted_policy="keep_last_revision", parse_retries=0)
    lost_once = in_review(1).with_changes(
        rounds=(msgspec.structs.replace(in_review(1).rounds[0], winner="A", explanation="w"),),
        feedback="w")
    out = only(await kit.handle("refine", lost_once))
    assert (out.topic, out.outcome) == ("items.align", "exhausted")
    assert out.item.instruction == "Say hello politely."
    assert "round 1" in out.item.status_reason and out.item.rounds[-1].revision_failed


async def test_keep_last_revision_without_any_readable_revision_keeps_the_original(
    make_kit: MakeKit,
) -> None:
    """No readable revision at all: keep_last_revision falls back to the original, unrefined."""
    kit = await make_kit({"answer": "hi", "evaluate": EVALUATION,
                             "refine": "no idea"},
                            max_rounds=1, exhausted_policy="keep_last_revision", parse_retries=0)
    out = only(await kit.handle("refine", an_item(quality="low")))
    assert (out.topic, out.item.status) == ("items.curated", "unrefined")
    assert out.item.instruction == "Say hello" and out.item.converged is False
    assert out.item.status_reason == (
        "no revision won in 1 rounds; no readable revision, original kept")


async def test_align_of_an_exhausted_revision_keeps_saying_it_never_won(make_kit: MakeKit) -> None:
    """Aligning a kept-but-lost revision: status refined, converged False, reason kept."""
    kit = await make_kit({"align": "Output:\nHello there, friend!",
                             "score": HIGH})
    exhausted = in_review(3).with_changes(
        instruction="Say hello politely.", converged=False,
        status_reason="exhausted: no revision won in 3 rounds; last revision (round 3) aligned")
    out = only(await kit.handle("align", exhausted))
    assert (out.topic, out.item.status, out.item.converged) == ("items.curated", "refined", False)
    assert out.item.output == "Hello there, friend!" and out.item.output_aligned
    assert out.item.status_reason.startswith("exhausted: no revision won")


def truncated_count(kit: StageKit, role: str, task: str) -> float:
    value = kit.metrics.registry.get_sample_value(
        "iterrefine_llm_truncated_total", {"role": role, "task": task})
    return value or 0.0


async def test_stages_ask_with_the_papers_token_limits(make_kit: MakeKit) -> None:
    """Each task's request carries its configured max_tokens (paper values by default),
    as the paper sends them: not fitted to the item (fit_max_tokens off, as in its preset)."""
    kit = await make_kit({"answer": "Hello.", "evaluate": EVALUATION,
                                  "refine": REVISION}, fit_max_tokens=False)
    await kit.handle("refine", an_item(quality="low"))
    limits = {r.task: r.max_tokens for r in kit.requests}
    assert limits == {"answer": 2000, "evaluate": 2048, "refine": 4096}


async def test_truncated_align_is_reasked_with_a_higher_limit(make_kit: MakeKit) -> None:
    """finish_reason=length once: re-asked with twice the limit; the complete answer is used
    (the configured limit, not fitted to the item: fit_max_tokens off)."""
    kit = await make_kit({"align": cut_off_below(8192, "Output:\nHello, nice to meet you!"),
                                  "score": HIGH}, fit_max_tokens=False)
    out = only(await kit.handle("align", in_review(1)))
    assert out.item.output == "Hello, nice to meet you!" and out.item.output_aligned
    assert [r.max_tokens for r in kit.script.of("align")] == [4096, 8192]
    assert truncated_count(kit, "strong", "align") == 1


async def test_truncated_align_twice_is_never_curated_as_complete(make_kit: MakeKit) -> None:
    """Cut off at both limits: the half-written output is discarded, the original kept."""
    kit = await make_kit({"align": cut_off_below(10**6, "Output:\nHello, nice to see you"),
                                  "score": HIGH})
    out = only(await kit.handle("align", in_review(1)))
    assert out.topic == "items.curated"
    assert out.item.output == "Hello!" and not out.item.output_aligned
    assert "align_unparseable" in out.item.status_reason and "cut off" in out.item.status_reason
    assert kit.script.count("align") == 2
    assert truncated_count(kit, "strong", "align") == 2
    assert truncated_by_task(kit.metrics) == {"strong/align": 2}  # the run summary's row


async def test_truncated_backbone_answer_loses_the_round(make_kit: MakeKit) -> None:
    """A backbone answer cut off twice in review is unreadable: the round is lost, not judged."""
    kit = await make_kit({"answer": cut_off_below(10**6, "Hello there, how"),
                                  "review": "Winner: B\nExplanation: fine."})
    out = only(await kit.handle("review", in_review(1)))
    assert out.topic == "items.refine" and out.item.rounds[-1].winner == "none"
    assert kit.script.count("review") == 0
    assert truncated_count(kit, "backbone", "answer") == 2


async def test_truncated_score_raises_for_the_dlq(make_kit: MakeKit) -> None:
    """A judge answer cut off twice at scoring raises TruncatedOutput (dead-lettered)."""
    kit = await make_kit({"score": cut_off_below(10**6, HIGH)})
    with pytest.raises(TruncatedOutput):
        await kit.handle("score", an_item())


@pytest.mark.parametrize(("mode", "phrase"), [
    ("anchored", "Add no new facts"),
    ("complete", "fully answers the revised instruction"),
])
async def test_alignment_mode_picks_the_prompt_and_is_recorded(
    make_kit: MakeKit, mode: str, phrase: str
) -> None:
    """alignment_mode chooses the align instructions and is recorded on the item."""
    kit = await make_kit({"align": "Output:\nHello!", "score": HIGH},
                                 alignment_mode=mode)
    out = only(await kit.handle("align", in_review(1)))
    assert out.item.alignment_mode == mode
    (request,) = kit.script.of("align")
    assert phrase in request.system
