"""OA — Output Alignment.

A converged item — or, under the ``keep_last_revision`` policy, an item whose last
revision never won (``converged = False``) — has a revised instruction/input but the
original reference output. The strong model rewrites that output so it answers the revised
instruction. Two modes: ``anchored`` keeps to the original output's key facts and
keywords (no new facts, no drift); ``complete`` — what the paper's figure shows —
answers the revised instruction in full, adding what it asks for while keeping the
original's facts where they still apply. The item records the mode. If the
rewrite cannot be read, the original output is kept and the item is marked so.
Optionally the judge scores the refined item again, so users can see whether
refinement lifted quality.
"""

from __future__ import annotations

from iterrefine.context import PipelineContext
from iterrefine.errors import UnparseableOutput
from iterrefine.llm.tasks import ask_aligned, ask_score
from iterrefine.model import Item, Judgement
from iterrefine.runtime import Output, Stage


async def rescore(ctx: PipelineContext, item: Item) -> Item:
    """The judge's scores of the refined item; an unreadable answer just leaves none."""
    try:
        answer = await ask_score(ctx.strong, instruction=item.instruction, input=item.input,
                                 output=item.output, parse_retries=ctx.config.parse_retries,
                                 max_tokens=ctx.max_tokens("score"),
                                 on_truncated=ctx.count_truncated("strong"))
    except UnparseableOutput:
        return item
    if answer.scores is not None:
        ctx.metrics.quality_score.labels("align").observe(answer.scores.mean)
    return item.with_changes(final_judgement=Judgement(
        usable=answer.usable, reason=answer.reason, scores=answer.scores,
        verdict=answer.verdict, justification=answer.justification,
    ))


def stage(ctx: PipelineContext) -> Stage:
    mode = ctx.config.alignment_mode

    async def align(item: Item) -> list[Output]:
        item = ctx.stamp(item).with_changes(alignment_mode=mode)
        try:
            aligned = await ask_aligned(
                ctx.strong,
                original_instruction=item.original.instruction,
                original_input=item.original.input,
                original_output=item.original.output,
                revised_instruction=item.instruction,
                revised_input=item.input,
                mode=mode,
                parse_retries=ctx.config.parse_retries,
                max_tokens=ctx.max_tokens("align"),
                on_truncated=ctx.count_truncated("strong"),
            )
            item = item.with_changes(output=aligned.output, output_aligned=True,
                                     status="refined")
        except UnparseableOutput as exc:  # a cut-off answer (TruncatedOutput) included
            # An exhausted item keeps its reason (it never won) and gains this one.
            failure = f"align_unparseable: original output kept ({exc})"
            reason = "; ".join(filter(None, (item.status_reason, failure)))
            item = item.with_changes(output=item.original.output, output_aligned=False,
                                     status="refined", status_reason=reason)
        if ctx.config.rescore_refined:
            item = await rescore(ctx, item)
        return [Output("items.curated", item)]

    return Stage("align", "items.align", align)
