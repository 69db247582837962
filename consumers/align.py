"""OA — Output Alignment.

A converged item has a revised instruction/input but the original reference
output. The strong model rewrites that output so it answers the revised
instruction, anchored to the original output's key facts and keywords (no new
facts, no drift). If the rewrite cannot be read, the original output is kept
and the item is marked so. Optionally the judge scores the refined item again,
so users can see whether refinement lifted quality.
"""

from __future__ import annotations

import structlog

from iterrefine.consumers.reentry import fresh
from iterrefine.context import PipelineContext
from iterrefine.errors import UnparseableOutput, ValidationError
from iterrefine.graph import StageSpec
from iterrefine.llm.tasks import ask_aligned, ask_score
from iterrefine.model import Item, Judgement
from iterrefine.runtime import Handler, Output

log = structlog.get_logger("iterrefine.align")


async def rescore(ctx: PipelineContext, item: Item) -> Item:
    """The judge's scores of the refined item; an unreadable answer leaves none, and says so
    (a warning and ``iterrefine_rescore_failures_total``)."""
    try:
        answer = await ask_score(ctx.strong, instruction=item.instruction, input=item.input,
                                 output=item.output, parse_retries=ctx.config.parse_retries)
    except UnparseableOutput as exc:
        ctx.metrics.rescore_failures_total.inc()
        log.warning("rescore_failed", item_id=item.id, error=str(exc))
        return item
    if answer.scores is not None:
        ctx.metrics.quality_score.labels("align").observe(answer.scores.mean)
    return item.with_changes(final_judgement=Judgement(
        usable=answer.usable, reason=answer.reason, scores=answer.scores,
        verdict=answer.verdict, justification=answer.justification,
    ))


def handler(ctx: PipelineContext) -> Handler:
    async def align(item: Item) -> list[Output]:
        item = ctx.stamp(item)
        try:
            aligned = await ask_aligned(
                ctx.strong,
                original_instruction=item.original.instruction,
                original_input=item.original.input,
                original_output=item.original.output,
                revised_instruction=item.instruction,
                revised_input=item.input,
                parse_retries=ctx.config.parse_retries,
            )
            item = item.with_changes(output=aligned.output, output_aligned=True,
                                     status="refined")
        except UnparseableOutput:
            item = item.with_changes(output=item.original.output, output_aligned=False,
                                     status="refined",
                                     status_reason="align_unparseable: original output kept")
        if ctx.config.rescore_refined:
            item = await rescore(ctx, item)
        return [Output("items.curated", item)]

    return align


def reset(item: Item, revision: int) -> Item:
    """Replay into align: only an item whose last revision won its review."""
    last = item.rounds[-1] if item.rounds else None
    if last is None or last.winner not in ("B", "Tie"):
        raise ValidationError("no revision of the item won its review", reason="not_converged")
    return fresh(item, revision).with_changes(
        instruction=last.instruction, input=last.input, feedback=None)


SPEC = StageSpec(
    name="align", input_topic="items.align", outputs=("items.curated",),
    waits=True, handler=handler, reset=reset, roles=("strong",),
    summary="the reference output is rewritten to answer the revised instruction",
)
