"""FIR — the requeue rule both refine and review apply when a revision loses.

A lost round (the judge preferred the original, or an answer could not be read)
sends the item back to refine with the explanation as feedback, until the round
limit; then the exhausted policy decides: keep the original, drop the item, or
(as the paper does) align the last readable revision although it never won.
"""

from __future__ import annotations

from iterrefine.graph.context import PipelineContext
from iterrefine.item.model import Item, Round
from iterrefine.runtime import Output

#: Everywhere a lost round can send the item.
LOST_ROUND_TOPICS = ("items.refine", "items.curated", "items.rejected", "items.align")


def last_readable_revision(item: Item) -> Round | None:
    """The newest round whose refine answer could be read (its verdict may not have been)."""
    for candidate in reversed(item.rounds):
        if not candidate.revision_failed:
            return candidate
    return None


def exhausted_reason(rounds: int, kept: Round) -> str:
    """``status_reason`` of an item whose last revision was aligned although it never won."""
    return (f"exhausted: no revision won in {rounds} rounds; "
            f"last revision (round {kept.number}) aligned")


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
