"""FIR — *evaluate*, then *refine*.

Evaluate (once per item): the backbone model answers the original instruction,
and the strong model grades that answer against the reference output (1–10)
with concrete suggestions. The backbone's answer is kept: it is side A of every
later review.

Refine (every round): the strong model rewrites the original instruction and
input from what the paper's figure shows it gets — the backbone's answer to that
instruction, the evaluation of that answer, and, from round 2 on, the *feedback
set*: every earlier reviewer's explanation of why a revision lost, oldest first
(bounded in size). The revision goes to review. A rewrite that cannot be read
(the backbone's answer, the grade or the rewrite) counts as a lost round (see
:func:`iterrefine.consumers.rounds.lose_round`); the next round evaluates again
if needed. So does a revision that drops the item's context or copies its answer into
it, refused before review (:mod:`iterrefine.consumers.guards`). A revision that changes
nothing ends refinement: the original is curated as ``unrefined``, reason "no change".
"""

from __future__ import annotations

import msgspec

from iterrefine.consumers.guards import revision_problem, unchanged
from iterrefine.consumers.reentry import before_refinement
from iterrefine.consumers.rounds import LOST_ROUND_TOPICS, lose_round
from iterrefine.errors import UnparseableOutput
from iterrefine.graph.context import PipelineContext
from iterrefine.graph.spec import StageSpec
from iterrefine.item.model import Evaluation, Item, Round
from iterrefine.runtime import Handler, Output
from iterrefine.tasks.ask import ask_answer, ask_evaluation, ask_revision
from iterrefine.tasks.prompts import evaluation_text


async def evaluate(ctx: PipelineContext, item: Item) -> Item:
    answer = await ask_answer(
        ctx.backbone, instruction=item.instruction, input=item.input,
        parse_retries=ctx.config.parse_retries, max_tokens=ctx.max_tokens("answer"),
    )
    grade = await ask_evaluation(
        ctx.strong,
        instruction=item.instruction,
        input=item.input,
        reference_output=item.output,
        candidate_answer=answer,
        parse_retries=ctx.config.parse_retries,
        max_tokens=ctx.max_tokens("evaluate"),
    )
    evaluation = Evaluation(
        backbone_answer=answer, score=grade.score, text=grade.evaluation,
        suggestions=grade.suggestions,
    )
    return item.with_changes(evaluation=evaluation, original_answer=answer)


def feedback_set(item: Item, *, max_entries: int, max_chars: int) -> list[str]:
    """The reviewers' explanations of lost rounds, oldest first, newest kept when bounded.

    Only a judge's preference for the original counts as feedback; a round lost
    because an answer could not be read carries no critique of the revision. The
    newest explanations are kept whole while they fit in ``max_chars``; if even the
    newest does not fit, its beginning is kept.
    """
    explanations = [r.explanation for r in item.rounds if r.winner == "A" and r.explanation]
    kept: list[str] = []
    budget = max_chars
    for text in reversed(explanations[-max_entries:] if max_entries > 0 else []):
        if len(text) > budget:
            if not kept and budget > 0:
                kept.append(text[:budget])
            break
        kept.append(text)
        budget -= len(text)
    return kept[::-1]


def handler(ctx: PipelineContext) -> Handler:
    async def refine(item: Item) -> list[Output]:
        item = ctx.stamp(item)
        number = item.round + 1
        sent = tuple(feedback_set(item, max_entries=ctx.config.feedback_max_entries,
                                  max_chars=ctx.config.feedback_max_chars))
        try:
            if item.evaluation is None:
                item = await evaluate(ctx, item)
            assert item.evaluation is not None
            revision = await ask_revision(
                ctx.strong,
                round=number,
                instruction=item.original.instruction,
                input=item.original.input,
                reference_output=item.original.output,
                backbone_answer=item.evaluation.backbone_answer,
                evaluation=evaluation_text(
                    item.evaluation.score, item.evaluation.text, item.evaluation.suggestions
                ),
                feedback_set=sent,
                parse_retries=ctx.config.parse_retries,
                max_tokens=ctx.max_tokens("refine"),
                fit_tokens=ctx.config.fit_max_tokens,
            )
        except UnparseableOutput as exc:
            # The feedback set was sent only if the failure was the rewrite's own answer.
            failed = Round(number=number, instruction=item.instruction, input=item.input,
                           feedback=item.feedback, winner="none", revision_failed=True,
                           feedback_set=sent if exc.task == "refine" else (),
                           explanation=f"the {exc.task} answer could not be read: {exc}")
            lost = item.with_changes(round=number, rounds=(*item.rounds, failed))
            return [lose_round(ctx, lost, failed.explanation)]
        return [checked(ctx, item, number, revision.instruction, revision.input, sent)]

    return refine


#: ``status_reason`` of an item whose refiner gave back the instruction and input as they
#: were: nothing was refined, and the item says so instead of claiming ``refined``.
NO_CHANGE = "no change: the refiner returned the instruction and input unchanged"


def checked(ctx: PipelineContext, item: Item, number: int, instruction: str,
            input: str, sent: tuple[str, ...] = ()) -> Output:
    """Where round ``number``'s revision goes: to review, or not (see consumers.guards).

    ``sent``: the feedback set the refiner was given, kept on the round as lineage.
    """
    original = item.original
    current = Round(number=number, instruction=instruction, input=input,
                    feedback=item.feedback, feedback_set=sent)
    if unchanged(original.instruction, original.input, instruction, input):
        same = msgspec.structs.replace(current, explanation=NO_CHANGE)
        kept = item.with_changes(
            round=number, rounds=(*item.rounds, same), status="unrefined",
            status_reason=NO_CHANGE, instruction=original.instruction, input=original.input,
            output=original.output, converged=False, feedback=None)
        return Output("items.curated", kept, outcome="unchanged")
    problem = revision_problem(original.instruction, original.input, original.output,
                               instruction, input)
    if problem is not None:
        refused = msgspec.structs.replace(current, revision_failed=True,
                                          explanation=f"refused before review: {problem}")
        lost = item.with_changes(round=number, rounds=(*item.rounds, refused))
        return lose_round(ctx, lost, refused.explanation)
    revised = item.with_changes(round=number, rounds=(*item.rounds, current))
    return Output("items.review", revised, outcome="review")


def reset(item: Item, revision: int) -> Item:
    """Replay into refine: refinement starts over from round 1."""
    return before_refinement(item, revision)


SPEC = StageSpec(
    name="refine", input_topic="items.refine", outputs=("items.review", *LOST_ROUND_TOPICS),
    waits=True, handler=handler, reset=reset, roles=("strong", "backbone"),
    summary="evaluate once, then rewrite the instruction from evaluation and feedback",
)
