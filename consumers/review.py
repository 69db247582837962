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

from iterrefine.context import PipelineContext
from iterrefine.errors import UnparseableOutput
from iterrefine.llm.tasks import ReviewSample, ask_answer, ask_verdict
from iterrefine.model import Item, Winner, exhausted_reason, last_readable_revision
from iterrefine.runtime import Output, Stage


def lose_round(ctx: PipelineContext, item: Item, explanation: str) -> Output:
    """The revision of round ``item.round`` lost: requeue with feedback, or give up."""
    if item.round < ctx.config.max_rounds:
        return Output("items.refine", item.with_changes(feedback=explanation), outcome="requeued")
    ctx.metrics.refine_rounds.labels("exhausted").observe(item.round)
    policy = ctx.config.exhausted_policy
    if policy == "drop":
        dropped = item.with_changes(
            status="dropped", status_reason=f"no revision won in {item.round} rounds",
            converged=False,
        )
        return Output("items.rejected", dropped, outcome="exhausted")
    last = last_readable_revision(item) if policy == "keep_last_revision" else None
    if last is not None:
        # The paper's choice: at the round limit the last revision is kept and its output
        # aligned. It never won a review, and the item says so (``converged = False``).
        kept_revision = item.with_changes(
            instruction=last.instruction, input=last.input, feedback=None, converged=False,
            status_reason=exhausted_reason(item.round, last),
        )
        return Output("items.align", kept_revision, outcome="exhausted")
    original = item.original
    why = "no readable revision, original kept" if policy == "keep_last_revision" else (
        "original kept")
    kept = item.with_changes(
        status="unrefined",
        status_reason=f"no revision won in {item.round} rounds; {why}",
        instruction=original.instruction,
        input=original.input,
        output=original.output,
        converged=False,
    )
    return Output("items.curated", kept, outcome="exhausted")


async def judge(
    ctx: PipelineContext, number: int, a: ReviewSample, b: ReviewSample
) -> tuple[Winner, str]:
    """Winner between original A and revision B (both orders when position swap is on)."""
    max_tokens, on_truncated = ctx.max_tokens("review"), ctx.count_truncated("strong")
    first = await ask_verdict(ctx.strong, round=number, a=a, b=b,
                              parse_retries=ctx.config.parse_retries, max_tokens=max_tokens,
                              on_truncated=on_truncated)
    if not ctx.config.position_swap or first.winner == "A":
        return first.winner, first.explanation
    swapped = await ask_verdict(ctx.strong, round=number, a=b, b=a,
                                parse_retries=ctx.config.parse_retries, max_tokens=max_tokens,
                                on_truncated=on_truncated)
    # In the swapped order the revision is "A": it must win or tie there too.
    if swapped.winner == "B":
        return "A", swapped.explanation
    winner: Winner = "Tie" if "Tie" in (first.winner, swapped.winner) else "B"
    return winner, first.explanation


def stage(ctx: PipelineContext) -> Stage:
    async def review(item: Item) -> list[Output]:
        item = ctx.stamp(item)
        current = item.rounds[-1]
        revised_answer = ""
        winner: Winner
        try:
            revised_answer = await ask_answer(
                ctx.backbone, instruction=current.instruction, input=current.input,
                parse_retries=ctx.config.parse_retries, max_tokens=ctx.max_tokens("answer"),
                on_truncated=ctx.count_truncated("backbone"),
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

    return Stage("review", "items.review", review)
