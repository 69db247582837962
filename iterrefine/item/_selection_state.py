"""The paper's selection signals as item state: difficulty and diversity cluster.

Part of the item model (:mod:`iterrefine.item.model` re-exports them); kept apart so that
model.py stays one screenful of the core item.
"""

from __future__ import annotations

from typing import Literal

import msgspec


class Difficulty(msgspec.Struct, frozen=True, kw_only=True):
    """How hard the instruction is for a small model, from completion logprobs.

    ``metric`` is ``instruction_ppl`` (perplexity of the instruction text, what the
    paper's code ran) or ``ifd`` (perplexity of the output given the instruction over
    perplexity of the output alone, Cherry-LLM's IFD).
    """

    value: float
    metric: str
    model: str


class Selection(msgspec.Struct, frozen=True, kw_only=True):
    """The paper's selection signals of an item: its diversity cluster and the decision.

    Only the cluster id travels, never the embedding vector. ``cluster`` is ``None``
    while no centroid model exists yet (warm-up): the item is then ranked in one
    pseudo-cluster.
    """

    cluster: int | None
    #: Version of the shared centroid model that assigned ``cluster`` (0 = none yet).
    model_version: int = 0
    embedding_model: str = ""
    #: The route's decision: ``high`` or ``low`` (``None`` before routing).
    decision: Literal["high", "low"] | None = None
    #: Share of the cluster's recent items that ranked above this one at routing.
    rank: float | None = None
