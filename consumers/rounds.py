"""FIR — the requeue rule both refine and review apply when a revision loses.

A lost round (the judge preferred the original, or an answer could not be read)
sends the item back to refine with the explanation as feedback, until the round
limit; then the exhausted policy decides: keep the original, or drop the item.
"""

from __future__ import annotations

from iterrefine.context import PipelineContext
from iterrefine.model import Item
from iterrefine.runtime import Output

#: Everywhere a lost round can send the item.
LOST_ROUND_TOPICS = ("items.refine", "items.curated", "items.rejected")


def lose_round(ctx: PipelineContext, item: Item, explanation: str) -> Output:
    """The revision of round ``item.round`` lost: requeue with feedback, or give up."""
    if item.round < ctx.config.max_rounds:
        return Output("items.refine", item.with_changes(feedback=explanation), outcome="requeued")
    ctx.metrics.refine_rounds.labels("exhausted").observe(item.round)
    if ctx.config.exhausted_policy == "drop":
        dropped = item.with_changes(
            status="dropped", status_reason=f"no revision won in {item.round} rounds"
        )
        return Output("items.rejected", dropped, outcome="exhausted")
    original = item.original
    kept = item.with_changes(
        status="unrefined",
        status_reason=f"no revision won in {item.round} rounds; original kept",
        instruction=original.instruction,
        input=original.input,
        output=original.output,
    )
    return Output("items.curated", kept, outcome="exhausted")
