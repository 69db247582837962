"""The paper's Selection half: task filter support, difficulty, diversity clusters, quota.

Mechanisms only; the decisions live in ``consumers.score`` (task filter, gathering the
signals) and ``consumers.route`` (the ``cluster_quota`` routing policy). Two modes:
exact (``iterrefine run``: the paper's batch procedure behind a barrier at route,
:mod:`.barrier` and :mod:`.exact`) and online (a shared, refitted centroid model,
:mod:`.centroids` and :mod:`.shared`, and a running per-cluster rank, :mod:`.quota`).
Imports the layers below it (config, item, observe, kafka, llm); private modules
(``_records``, ``_vector_file``) are used only inside this package.
"""

from iterrefine.selection.barrier import (
    DecisionTable,
    ExactSelection,
    SignalSink,
    exact_run_id,
    is_exact,
)
from iterrefine.selection.centroids import Assigner, CentroidModel, Trainer
from iterrefine.selection.difficulty import DifficultyScorer, alpaca_prompt, perplexity
from iterrefine.selection.embeddings import Embedder, Embedding, embedding_of, pooled_vector
from iterrefine.selection.exact import (
    ExactDecision,
    effective_k,
    exact_clusters,
    exact_decisions,
    exact_quota,
)
from iterrefine.selection.policy import ClusterQuotaPolicy, ExactQuotaPolicy
from iterrefine.selection.quota import ClusterQuota, QuotaDecision
from iterrefine.selection.selector import Selector, selector_for
from iterrefine.selection.shared import MODEL_TOPIC, SharedCentroids

__all__ = [
    "MODEL_TOPIC",
    "Assigner",
    "CentroidModel",
    "ClusterQuota",
    "ClusterQuotaPolicy",
    "DecisionTable",
    "DifficultyScorer",
    "Embedder",
    "Embedding",
    "ExactDecision",
    "ExactQuotaPolicy",
    "ExactSelection",
    "QuotaDecision",
    "Selector",
    "SharedCentroids",
    "SignalSink",
    "Trainer",
    "alpaca_prompt",
    "effective_k",
    "embedding_of",
    "exact_clusters",
    "exact_decisions",
    "exact_quota",
    "exact_run_id",
    "is_exact",
    "perplexity",
    "pooled_vector",
    "selector_for",
]
