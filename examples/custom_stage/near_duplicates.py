"""A user stage: drop near-duplicate items before the paid judge sees them.

Two items are near-duplicates when their instruction (and, with the option
``compare_input``, their input) match once normalised: case, accents,
punctuation and spacing ignored. The first one seen goes on to
score; later ones go to ``items.rejected`` with a reason naming the item they
duplicate, and cost no LLM call at all. Placed in front of score by
``iterrefine.toml`` beside this file (``[[stages]]`` with ``before = "score"``), it
reads what score read (``items.raw``: the records arrive decoded into items) and
writes the items score should see to ``items.near_duplicates``.

The memory of what was seen is this process's: with several worker processes, a
duplicate whose twin went to another process's partition passes. That is the
usual trade of an in-memory filter; a shared store (or keying items by their
normalised text) removes it.
"""

from __future__ import annotations

import re
import unicodedata

from iterrefine import InlineHandler, Item, Output, PipelineContext, StageSpec

_NOT_WORD = re.compile(r"[\W_]+")


def normalised(text: str) -> str:
    """``text`` lowercased, accents folded, punctuation and runs of spaces as one space."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return _NOT_WORD.sub(" ", folded.lower()).strip()


def handler(ctx: PipelineContext) -> InlineHandler:
    # ctx.options is the [stages.options] table of this stage's config entry.
    compare_input = bool(ctx.options.get("compare_input", True))
    first_seen: dict[tuple[str, str], str] = {}  # normalised (instruction, input) → item id

    def near_duplicates(item: Item) -> list[Output]:
        given = normalised(item.original.input) if compare_input else ""
        key = (normalised(item.original.instruction), given)
        first = first_seen.setdefault(key, item.id)
        if first == item.id:  # new, or the same item delivered again
            return [Output("items.near_duplicates", item)]
        rejected = item.with_changes(
            status="rejected", status_reason=f"near-duplicate of {first} (same instruction)")
        return [Output("items.rejected", rejected, outcome="duplicate")]

    return near_duplicates


SPEC = StageSpec(
    name="near_duplicates",
    # No input_topic: the config places it (before = "score"), so it reads score's topic.
    outputs=("items.near_duplicates", "items.rejected"),
    waits=False,  # a dictionary lookup: run inline, a fetched batch at a time
    handler=handler,
    summary="drop items whose normalised instruction and input were seen before",
)
