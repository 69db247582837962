"""What replaying an item into a stage clears: the state that stage and later ones made.

Each stage's ``reset`` rule (its registry entry's ``reset``) starts from
:func:`fresh`: a newer revision, pending status, and the original fields back as
the current ones; the stage then clears (or checks) what it is about to redo.
"""

from __future__ import annotations

from iterrefine.item.model import Item


def fresh(item: Item, revision: int) -> Item:
    """``item`` with ``revision``, pending again, its current fields back to the original."""
    original = item.original
    return item.with_changes(
        revision=revision, status="pending", status_reason="", output_aligned=False,
        final_judgement=None, instruction=original.instruction, input=original.input,
        output=original.output, converged=None, alignment_mode=None,
    )


def before_refinement(item: Item, revision: int) -> Item:
    """``fresh``, with every trace of refinement (evaluation, rounds, feedback) gone."""
    return fresh(item, revision).with_changes(
        evaluation=None, original_answer=None, round=0, rounds=(), feedback=None)
