"""The paper's method as pipeline stages, one module each: score, route, refine ⇄ review, align.

Installed as ``iterrefine.consumers``. Each module declares its stage as data
(``SPEC``: name, input topic, output topics, whether it waits, replay rule); the
pipeline is their :class:`~iterrefine.graph.spec.StageGraph`, in order.
"""

from __future__ import annotations

from collections.abc import Sequence

from iterrefine.consumers import align, refine, review, route, score
from iterrefine.graph.context import PipelineContext
from iterrefine.graph.spec import StageGraph
from iterrefine.runtime import Stage

#: The paper's pipeline: IQD (score, route), FIR (refine ⇄ review), OA (align).
PIPELINE = StageGraph([score.SPEC, route.SPEC, refine.SPEC, review.SPEC, align.SPEC])
STAGE_NAMES = PIPELINE.names


def build_stages(ctx: PipelineContext, names: Sequence[str] = STAGE_NAMES) -> list[Stage]:
    """The built-in stages called ``names``, built on ``ctx``."""
    return PIPELINE.build(ctx, names)


__all__ = ["PIPELINE", "STAGE_NAMES", "build_stages"]
