"""FIR — *review*, and the requeue loop.

The backbone model answers the revised instruction. A strong pairwise judge
compares A = (original instruction, input, backbone answer) with B = (revised
instruction, input, backbone answer). If B wins or ties, the item has
**converged** and goes on to output alignment. If A wins, the revision lost: the
item is requeued to refine with the judge's explanation as feedback, until the
round limit; then the exhausted policy decides: keep the original, drop the item, or
(as the paper does) align the last readable revision although it never won.

With position swapping the judge is asked in both orders, and B converges only
if it wins or ties in both (judges favour one position; this cancels it out).
"""

from __future__ import annotations

import msgspec

from iterrefine.consumers.reentry import fresh
from iterrefine.consumers.rounds import LOST_ROUND_TOPICS, lose_round
from iterrefine.errors import UnparseableOutput, ValidationError
from iterrefine.graph.context import PipelineContext
from iterrefine.graph.spec import StageSpec
from iterrefine.item.model import Item, Winner
from iterrefine.runtime import Handler, Output
from iterrefine.tasks.ask import ReviewSample, ask_answer, ask_verdict


async def judge(
    ctx: PipelineContext, number: int, a: ReviewSample, b: ReviewSample
) -> tuple[Winner, str]:
    """Winner between original A and revision B (both orders when position swap is on)."""
    max_tokens = ctx.max_tokens("review")
    first = await ask_verdict(ctx.strong, round=number, a=a, b=b,
                              parse_retries=ctx.config.parse_retries, max_tokens=max_tokens)
    if not ctx.config.position_swap or first.winner == "A":
        return first.winner, first.explanation
    swapped = await ask_verdict(ctx.strong, round=number, a=b, b=a,
                                parse_retries=ctx.config.parse_retries, max_tokens=max_tokens)
    # In the swapped order the revision is "A": it must win or tie there too.
    if swapped.winner == "B":
        return "A", swapped.explanation
    winner: Winner = "Tie" if "Tie" in (first.winner, swapped.winner) else "B"
    return winner, first.explanation


def handler(ctx: PipelineContext) -> Handler:
    async def review(item: Item) -> list[Output]:
        item = ctx.stamp(item)
        current = item.rounds[-1]
        revised_answer = ""
        winner: Winner
        try:
            revised_answer = await ask_answer(
                ctx.backbone, instruction=current.instruction, input=current.input,
                parse_retries=ctx.config.parse_retries, max_tokens=ctx.max_tokens("answer"),
            )
            original = ReviewSample(instruction=item.original.instruction,
                                    input=item.original.input,
                                    answer=item.original_answer or "")
            revised = ReviewSample(instruction=current.instruction, input=current.input,
                                   answer=revised_answer)
            winner, explanation = await judge(ctx, item.round, original, revised)
        except UnparseableOutput as exc:  # the policy: an unreadable review is a lost round
            winner, explanation = "none", f"the {exc.task} answer could not be read: {exc}"
        judged = msgspec.structs.replace(current, backbone_answer=revised_answer, winner=winner,
                                         explanation=explanation)
        item = item.with_changes(rounds=(*item.rounds[:-1], judged))
        if winner in ("B", "Tie"):
            ctx.metrics.refine_rounds.labels("converged").observe(item.round)
            converged = item.with_changes(instruction=current.instruction, input=current.input,
                                          feedback=None, converged=True)
            return [Output("items.align", converged, outcome="align")]
        return [lose_round(ctx, item, explanation)]

    return review


def reset(item: Item, revision: int) -> Item:
    """Replay into review: the last revision is judged again."""
    last = item.rounds[-1] if item.rounds else None
    if last is None:
        raise ValidationError("the item has no revision to review", reason="no_revision")
    pending = msgspec.structs.replace(last, backbone_answer="", winner="none", explanation="")
    return fresh(item, revision).with_changes(
        rounds=(*item.rounds[:-1], pending), round=last.number, feedback=last.feedback)


SPEC = StageSpec(
    name="review", input_topic="items.review", outputs=("items.align", *LOST_ROUND_TOPICS),
    waits=True, handler=handler, reset=reset, roles=("strong", "backbone"),
    summary="a pairwise judge compares the revision with the original; losers are requeued",
)
