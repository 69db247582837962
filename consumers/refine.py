"""FIR — *evaluate*, then *refine*.

Evaluate (once per item): the backbone model answers the original instruction,
and the strong model grades that answer against the reference output (1–10)
with concrete suggestions. The backbone's answer is kept: it is side A of every
later review.

Refine (every round): the strong model rewrites the instruction and input from
the evaluation — and, from round 2 on, from the reviewer's explanation of why
the previous revision lost. The revision goes to review. A rewrite that cannot
be read (the backbone's answer, the grade or the rewrite) counts as a lost round
(see :func:`consumers.review.lose_round`); the next round evaluates again if needed.
"""

from __future__ import annotations

from consumers.review import lose_round
from iterrefine.context import PipelineContext
from iterrefine.errors import UnparseableOutput
from iterrefine.llm.tasks import ask_answer, ask_evaluation, ask_revision
from iterrefine.model import Evaluation, Item, Round
from iterrefine.prompts import evaluation_text
from iterrefine.runtime import Output, Stage


async def evaluate(ctx: PipelineContext, item: Item) -> Item:
    answer = await ask_answer(
        ctx.backbone, instruction=item.instruction, input=item.input,
        parse_retries=ctx.config.parse_retries,
    )
    grade = await ask_evaluation(
        ctx.strong,
        instruction=item.instruction,
        input=item.input,
        reference_output=item.output,
        candidate_answer=answer,
        parse_retries=ctx.config.parse_retries,
    )
    evaluation = Evaluation(
        backbone_answer=answer, score=grade.score, text=grade.evaluation,
        suggestions=grade.suggestions,
    )
    return item.with_changes(evaluation=evaluation, original_answer=answer)


def stage(ctx: PipelineContext) -> Stage:
    async def refine(item: Item) -> list[Output]:
        item = ctx.stamp(item)
        number = item.round + 1
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
                evaluation=evaluation_text(
                    item.evaluation.score, item.evaluation.text, item.evaluation.suggestions
                ),
                reviewer_feedback=item.feedback if number > 1 else None,
                parse_retries=ctx.config.parse_retries,
            )
        except UnparseableOutput as exc:
            failed = Round(number=number, instruction=item.instruction, input=item.input,
                           feedback=item.feedback, winner="none", revision_failed=True,
                           explanation=f"the {exc.task} answer could not be read: {exc}")
            lost = item.with_changes(round=number, rounds=(*item.rounds, failed))
            return [lose_round(ctx, lost, failed.explanation)]
        current = Round(number=number, instruction=revision.instruction, input=revision.input,
                        feedback=item.feedback)
        revised = item.with_changes(round=number, rounds=(*item.rounds, current))
        return [Output("items.review", revised, outcome="review")]

    return Stage("refine", "items.refine", refine)
