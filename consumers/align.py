"""OA — Output Alignment.

A converged item — or, under the ``keep_last_revision`` policy, an item whose last
revision never won (``converged = False``) — has a revised instruction/input but the
original reference output. The strong model rewrites that output so it answers the
revised instruction. Two modes: ``anchored`` keeps to the original output's key
facts and keywords (no new facts, no drift); ``complete`` — what the paper's figure
shows — answers the revised instruction in full, adding what it asks for while
keeping the original's facts where they still apply. The item records the mode. If
the rewrite cannot be read, the original output is kept and the item is marked so.
An item whose instruction, input and output all equal the original after alignment
was not refined: it is curated as ``unrefined``, reason "no change".
Optionally the judge scores the refined item again, so users can see whether
refinement lifted quality.
"""

from __future__ import annotations

import structlog

from iterrefine.consumers.guards import unchanged
from iterrefine.consumers.judgements import judgement_of
from iterrefine.consumers.reentry import fresh
from iterrefine.consumers.rounds import exhausted_reason, last_readable_revision
from iterrefine.errors import UnparseableOutput, ValidationError
from iterrefine.graph.context import PipelineContext
from iterrefine.graph.spec import StageSpec
from iterrefine.item.model import Item
from iterrefine.runtime import Handler, Output
from iterrefine.tasks.ask import ask_aligned, ask_score

log = structlog.get_logger("iterrefine.align")

#: ``status_reason`` of an item that left alignment as it entered the pipeline.
NO_CHANGE_ALIGNED = "no change: instruction, input and output equal the original"


async def rescore(ctx: PipelineContext, item: Item) -> Item:
    """The judge's scores of the refined item; an unreadable answer leaves none, and says so
    (a warning and ``iterrefine_rescore_failures_total``)."""
    try:
        answer = await ask_score(ctx.strong, instruction=item.instruction, input=item.input,
                                 output=item.output, parse_retries=ctx.config.parse_retries,
                                 max_tokens=ctx.max_tokens("score"))
    except UnparseableOutput as exc:
        ctx.metrics.rescore_failures_total.inc()
        log.warning("rescore_failed", item_id=item.id, error=str(exc))
        return item
    if answer.scores is not None:
        ctx.metrics.quality_score.labels("align").observe(answer.scores.mean)
    return item.with_changes(final_judgement=judgement_of(answer))


def handler(ctx: PipelineContext) -> Handler:
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
                fit_tokens=ctx.config.fit_max_tokens,
            )
            item = item.with_changes(output=aligned.output, output_aligned=True,
                                     status="refined")
        except UnparseableOutput as exc:  # a cut-off answer (TruncatedOutput) included
            # An exhausted item keeps its reason (it never won) and gains this one.
            failure = f"align_unparseable: original output kept ({exc})"
            reason = "; ".join(filter(None, (item.status_reason, failure)))
            item = item.with_changes(output=item.original.output, output_aligned=False,
                                     status="refined", status_reason=reason)
        original = item.original
        if unchanged(original.instruction, original.input, item.instruction, item.input) and \
                unchanged(original.output, "", item.output, ""):
            # Revision and output are the original again: nothing was refined.
            reason = "; ".join(filter(None, (item.status_reason, NO_CHANGE_ALIGNED)))
            return [Output("items.curated", item.with_changes(status="unrefined",
                                                              status_reason=reason))]
        if ctx.config.rescore_refined:
            item = await rescore(ctx, item)
        return [Output("items.curated", item)]

    return align


def reset(item: Item, revision: int) -> Item:
    """Replay into align: an item whose last revision won its review, or whose last
    readable revision was aligned although it never won (``keep_last_revision``)."""
    last = item.rounds[-1] if item.rounds else None
    if last is not None and last.winner in ("B", "Tie"):
        return fresh(item, revision).with_changes(
            instruction=last.instruction, input=last.input, feedback=None, converged=True)
    kept = last_readable_revision(item) if item.converged is False else None
    if kept is None or item.status != "refined":
        raise ValidationError("no revision of the item won its review", reason="not_converged")
    return fresh(item, revision).with_changes(
        instruction=kept.instruction, input=kept.input, feedback=None, converged=False,
        status_reason=exhausted_reason(item.round, kept))


SPEC = StageSpec(
    name="align", input_topic="items.align", outputs=("items.curated",),
    waits=True, handler=handler, reset=reset, roles=("strong",),
    summary="the reference output is rewritten to answer the revised instruction",
)
