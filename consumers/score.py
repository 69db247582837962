"""IQD, step 1 — the LLM judge scores every item.

The strong model judges each original item on five dimensions (correctness,
completeness, clarity, instruction/format compliance, reasoning quality), says
whether it is usable at all, and gives an overall high/low verdict. Unusable
items leave the pipeline here, with the judge's reason. With the paper's task
filter on, so do items that involve no reasoning or inference (``not_reasoning``).
With the paper's selection (``cluster_quota`` routing), the item also gets its
instruction difficulty and embedding here (online: its diversity cluster too, and it is
sent to the partition of ``items.scored`` that owns its cluster's quota, so that one
route worker ranks the whole cluster). All others go on to routing
carrying their judgement. An answer that cannot be read even after
re-asking is an error of this stage (dead letter ``unparseable_judge_output``).
"""

from __future__ import annotations

from iterrefine.graph.context import PipelineContext
from iterrefine.graph.spec import StageSpec
from iterrefine.item.model import Item, Judgement
from iterrefine.runtime import Handler, Output
from iterrefine.tasks.ask import ask_score


def handler(ctx: PipelineContext) -> Handler:
    async def score(item: Item) -> list[Output]:
        answer = await ask_score(
            ctx.strong,
            instruction=item.instruction,
            input=item.input,
            output=item.output,
            parse_retries=ctx.config.parse_retries,
            max_tokens=ctx.max_tokens("score"),
        )
        judgement = Judgement(
            usable=answer.usable,
            reason=answer.reason,
            scores=answer.scores,
            verdict=answer.verdict,
            justification=answer.justification,
            involves_reasoning=answer.involves_reasoning,
        )
        item = ctx.stamp(item).with_changes(judgement=judgement)
        if judgement.scores is not None:
            ctx.metrics.quality_score.labels("score").observe(judgement.scores.mean)
        if not judgement.usable:
            rejected = item.with_changes(status="rejected", status_reason=judgement.reason)
            return [Output("items.rejected", rejected)]
        if ctx.config.task_filter and judgement.involves_reasoning is False:
            # The paper's whole data reduction: a QA pair without reasoning steps or
            # inference is dropped. An answer that does not say keeps the item.
            rejected = item.with_changes(status="rejected", status_reason="not_reasoning")
            return [Output("items.rejected", rejected, outcome="not_reasoning")]
        if ctx.selector is not None:
            item = await ctx.selector.annotate(item)
            return [Output("items.scored", item, outcome="scored",
                           partition_by=_quota_owner(item))]
        return [Output("items.scored", item, outcome="scored")]

    return score


def _quota_owner(item: Item) -> int | None:
    """Online: the cluster whose partition ranks the item (warm-up items: one, 0).

    Exact: None — the run decides every item at once, whoever routes it.
    """
    selection = item.selection
    if selection is None or selection.mode != "online":
        return None
    return selection.cluster or 0


def reset(item: Item, revision: int) -> Item:
    """Replay into score: a newer revision is enough (score starts from ``original``)."""
    return item.with_changes(revision=revision)


SPEC = StageSpec(
    name="score", input_topic="items.raw", outputs=("items.scored", "items.rejected"),
    waits=True, handler=handler, reset=reset, roles=("strong",),
    summary="the LLM judge scores every raw record; unusable items are rejected",
)
