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
    while no centroid model exists yet (online warm-up): the item is then ranked in one
    pseudo-cluster. ``rule`` says what decided, with the fields it used.
    """

    cluster: int | None
    #: Version of the shared centroid model that assigned ``cluster`` (0 = none yet;
    #: exact mode: 0, the clusters come from one k-means over the whole input).
    model_version: int = 0
    embedding_model: str = ""
    #: The route's decision: ``high`` or ``low`` (``None`` before routing).
    decision: Literal["high", "low"] | None = None
    #: Share of the cluster ranked above this item by (judge level, difficulty): exact
    #: mode, its place in the whole cluster (0 = first) over the cluster's size; online,
    #: the share of the cluster's recent window ranked above it when it was routed.
    rank: float | None = None
    #: What ``rank`` was measured against: the share of the cluster kept high (exact:
    #: ``round(k_ratio · n) / n``, or 1 for clusters of 1–2; online: ``k_ratio``
    #: corrected by the cluster's running count, or forced by the lexicographic rule).
    bar: float | None = None
    #: Online: the cluster's quota cut on the trainer's recent items, from the model
    #: version that assigned the cluster — an item whose (judge level, difficulty) is at
    #: or above it is high, unless the cluster's running count or the lexicographic rule
    #: overrules (``bar`` 1 or 0 then). ``None``: no cut (too few recent items).
    cut_level: int | None = None
    cut_difficulty: float | None = None
    #: Online: the share of judge-high items among the trainer's recent items (the model
    #: version's). A cluster with few items routed borrows it as evidence of where its
    #: cut falls (``iterrefine.selection.quota``). ``None``: warm-up, or not online.
    stream_high_share: float | None = None
    #: What decided (``mode`` exact: ``exact``, high iff ``rank < bar``; online: ``rank``,
    #: ``cut``, ``count``, ``lexicographic`` or ``evidence``, see
    #: ``iterrefine.selection.quota.QuotaDecision``).
    rule: str = ""
    #: ``exact`` or ``online`` (``None``: routed before the selection had modes).
    mode: Literal["exact", "online"] | None = None
    #: Exact: items in the cluster; online: items of the cluster routed so far.
    cluster_items: int | None = None
    #: Exact: the k the run used (lower than the configured k on a small input).
    k: int | None = None
    #: How the vector was pooled (``mean`` / ``last`` over token vectors here, or
    #: ``server`` when the endpoint answered one vector) and normalised (``none``/``l2``
    #: here, or ``server``: a server-pooled vector left as the server normalised it).
    pooling: str = ""
    normalization: str = ""
