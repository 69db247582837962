"""The paper's Selection half: task filter support, difficulty, diversity clusters, quota.

Mechanisms only; the decisions live in ``consumers.score`` (task filter, gathering the
signals) and ``consumers.route`` (the ``cluster_quota`` routing policy).
"""

from iterrefine.selection.centroids import Assigner, CentroidModel, Trainer
from iterrefine.selection.difficulty import DifficultyScorer, alpaca_prompt, perplexity
from iterrefine.selection.embeddings import Embedder, pooled_vector
from iterrefine.selection.exact import exact_clusters, exact_quota
from iterrefine.selection.policy import ClusterQuotaPolicy
from iterrefine.selection.quota import ClusterQuota, QuotaDecision
from iterrefine.selection.selector import Selector, selector_for
from iterrefine.selection.shared import MODEL_TOPIC, SharedCentroids

__all__ = [
    "MODEL_TOPIC",
    "Assigner",
    "CentroidModel",
    "ClusterQuota",
    "ClusterQuotaPolicy",
    "DifficultyScorer",
    "Embedder",
    "QuotaDecision",
    "Selector",
    "SharedCentroids",
    "Trainer",
    "alpaca_prompt",
    "exact_clusters",
    "exact_quota",
    "perplexity",
    "pooled_vector",
    "selector_for",
]
