"""The paper's method as pipeline stages, one module each: score, route, refine ⇄ review, align."""

from __future__ import annotations

from consumers import align, refine, review, route, score
from iterrefine.context import PipelineContext
from iterrefine.runtime import Stage

STAGE_NAMES = ("score", "route", "refine", "review", "align")


def build_stages(ctx: PipelineContext, names: tuple[str, ...] = STAGE_NAMES) -> list[Stage]:
    """The stages called ``names``, built on ``ctx``."""
    builders = {
        "score": score.stage,
        "route": route.stage,
        "refine": refine.stage,
        "review": review.stage,
        "align": align.stage,
    }
    unknown = [n for n in names if n not in builders]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; choose from {', '.join(STAGE_NAMES)}")
    return [builders[name](ctx) for name in names]


__all__ = ["STAGE_NAMES", "build_stages"]
