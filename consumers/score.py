"""IQD, step 1 — the LLM judge scores every item.

The strong model judges each original item on five dimensions (correctness,
completeness, clarity, instruction/format compliance, reasoning quality), says
whether it is usable at all, and gives an overall high/low verdict. Unusable
items leave the pipeline here, with the judge's reason. With the paper's task
filter on, so do items that involve no reasoning or inference (``not_reasoning``);
an answer that does not say is a setting (``task_filter_unstated``): the item is
kept, or — as the paper's code does — rejected (``reasoning_unstated``).
With the paper's selection (``cluster_quota`` routing), the item also gets its
instruction difficulty and embedding here (online: its diversity cluster too, and it is
sent to the partition of ``items.scored`` that owns its cluster's quota, so that one
route worker ranks the whole cluster). All others go on to routing
carrying their judgement. An answer that cannot be read even after
re-asking is an error of this stage (dead letter ``unparseable_judge_output``).
"""

from __future__ import annotations

from iterrefine.consumers.judgements import judgement_of
from iterrefine.graph.context import PipelineContext
from iterrefine.graph.spec import StageSpec
from iterrefine.item.model import Item, Judgement
from iterrefine.runtime import Handler, Output
from iterrefine.tasks.ask import ask_score


def task_filter_reason(ctx: PipelineContext, judgement: Judgement) -> str | None:
    """Why the paper's task filter drops the item, or ``None`` when it stays (or is off)."""
    if not ctx.config.task_filter:
        return None
    if judgement.involves_reasoning is False:
        return "not_reasoning"
    if judgement.involves_reasoning is None and ctx.config.task_filter_unstated == "reject":
        return "reasoning_unstated"
    return None


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
        judgement = judgement_of(answer)
        item = ctx.stamp(item).with_changes(judgement=judgement)
        if judgement.scores is not None:
            ctx.metrics.quality_score.labels("score").observe(judgement.scores.mean)
        if not judgement.usable:
            rejected = item.with_changes(status="rejected", status_reason=judgement.reason)
            return [Output("items.rejected", rejected)]
        filtered = task_filter_reason(ctx, judgement)
        if filtered is not None:
            # The paper's whole data reduction: a QA pair without reasoning steps or
            # inference is dropped.
            rejected = item.with_changes(status="rejected", status_reason=filtered)
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
