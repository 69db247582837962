"""All Prometheus metrics of iterrefine, in one place, bound to an injected registry.

Dashboards (deploy/grafana) and alerts (deploy/prometheus) rely on exactly these
names; tests pin them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "iterrefine"
_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)
#: Latency buckets reach at least this far by default (the longest LLM timeout usual).
DEFAULT_LONGEST_TIMEOUT_S = 600.0
_SCORE_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
_ROUND_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10)
# Difficulty spans IFD ratios (~0.3–1.5) and instruction perplexities (the paper's: 8–71).
_DIFFICULTY_BUCKETS = (0.25, 0.5, 0.75, 1, 1.5, 2, 5, 10, 20, 50, 100, 250, 1000)


def latency_buckets(longest_timeout_s: float = DEFAULT_LONGEST_TIMEOUT_S) -> tuple[float, ...]:
    """Bucket edges up to (and including) ``longest_timeout_s``, so that a call running
    into its timeout lands in a finite bucket rather than beyond the last edge."""
    edges = list(_LATENCY_BUCKETS)
    while edges[-1] < longest_timeout_s:
        edges.append(edges[-1] * 2.5 if edges[-1] * 2.5 < longest_timeout_s else longest_timeout_s)
    return tuple(edges)


class Metrics:
    """The metric families; create one per process (or per test, with its own registry)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        longest_timeout_s: float = DEFAULT_LONGEST_TIMEOUT_S,
    ) -> None:
        """``longest_timeout_s``: the longest configured LLM timeout; latency buckets
        reach it (never below :data:`DEFAULT_LONGEST_TIMEOUT_S`)."""
        self.registry = registry if registry is not None else CollectorRegistry()
        buckets = latency_buckets(max(longest_timeout_s, DEFAULT_LONGEST_TIMEOUT_S))
        self._stage_families(self.registry, buckets)
        self._llm_families(self.registry, buckets)
        self._quality_families(self.registry)

    def _stage_families(self, r: CollectorRegistry, buckets: tuple[float, ...]) -> None:
        """What the runtime counts: items, handler time, in-flight, lag, rounds, DLQ."""
        self.items_total = Counter(
            f"{PREFIX}_items_total", "Items leaving a stage, by outcome.",
            ["stage", "outcome"], registry=r,
        )
        self.stage_seconds = Histogram(
            f"{PREFIX}_stage_seconds",
            "Handler time per item (inline stages: one observation per fetched batch, its mean).",
            ["stage"],
            buckets=buckets, registry=r,
        )
        self.inflight = Gauge(
            f"{PREFIX}_inflight", "Messages being processed.", ["stage"], registry=r
        )
        self.consumer_lag = Gauge(
            f"{PREFIX}_consumer_lag", "End offset minus committed offset.",
            ["stage", "partition"], registry=r,
        )
        self.refine_rounds = Histogram(
            f"{PREFIX}_refine_rounds", "Rounds per item at the end of refinement.",
            ["outcome"], buckets=_ROUND_BUCKETS, registry=r,
        )
        self.dlq_total = Counter(
            f"{PREFIX}_dlq_total", "Messages dead-lettered, by stage and reason.",
            ["stage", "reason"], registry=r,
        )

    def _llm_families(self, r: CollectorRegistry, buckets: tuple[float, ...]) -> None:
        """What the LLM clients count: requests, latency, tokens, cut-offs, cache, circuit."""
        self.llm_requests_total = Counter(
            f"{PREFIX}_llm_requests_total", "LLM requests by role and status.",
            ["role", "status"], registry=r,
        )
        self.llm_seconds = Histogram(
            f"{PREFIX}_llm_seconds", "LLM request latency.", ["role"],
            buckets=buckets, registry=r,
        )
        self.llm_tokens_total = Counter(
            f"{PREFIX}_llm_tokens_total", "LLM tokens by role and kind (prompt/completion).",
            ["role", "kind"], registry=r,
        )
        self.llm_truncated_total = Counter(
            f"{PREFIX}_llm_truncated_total",
            "LLM answers cut off at max_tokens (finish_reason=length), by role and task.",
            ["role", "task"], registry=r,
        )
        self.llm_looped_total = Counter(
            f"{PREFIX}_llm_looped_total",
            "LLM answers cut short at a loop (a model repeating itself), by role and task.",
            ["role", "task"], registry=r,
        )
        self.llm_cache_total = Counter(
            f"{PREFIX}_llm_cache_total", "LLM response cache lookups by role and result "
            "(hit: answered without a request).", ["role", "result"], registry=r,
        )
        self.llm_cache_tokens_saved_total = Counter(
            f"{PREFIX}_llm_cache_tokens_saved_total",
            "Prompt + completion tokens of the answers the response cache gave back.",
            ["role"], registry=r,
        )
        self.llm_circuit_open = Gauge(
            f"{PREFIX}_llm_circuit_open",
            "1 while a role's endpoint is down or rejects the key (its calls wait).",
            ["role"], registry=r,
        )
        self.llm_answers_total = Counter(
            f"{PREFIX}_llm_answers_total",
            "LLM answers by task and how they read: first_try, after_reask or unreadable.",
            ["task", "outcome"], registry=r,
        )

    def _quality_families(self, r: CollectorRegistry) -> None:
        """What the stages' decisions count: re-score failures, judge scores, selection."""
        self.rescore_failures_total = Counter(
            f"{PREFIX}_rescore_failures_total",
            "Refined items whose re-score could not be read: curated without a final score.",
            registry=r,
        )
        self.quality_score = Histogram(
            f"{PREFIX}_quality_score", "Judge scores at scoring and after refinement.",
            ["stage"], buckets=_SCORE_BUCKETS, registry=r,
        )
        self.selection_items_total = Counter(
            f"{PREFIX}_selection_items_total",
            "Items routed by the cluster quota, by cluster (\"warmup\" before the first "
            "centroid model) and quality.",
            ["cluster", "quality"], registry=r,
        )
        self.selection_high_share = Gauge(
            f"{PREFIX}_selection_high_share",
            "Running share of a cluster's items routed high (target: selection.k_ratio).",
            ["cluster"], registry=r,
        )
        self.selection_difficulty = Histogram(
            f"{PREFIX}_selection_difficulty", "Instruction difficulty of scored items.",
            ["metric"], buckets=_DIFFICULTY_BUCKETS, registry=r,
        )
        self.selection_model_version = Gauge(
            f"{PREFIX}_selection_model_version",
            "Version of the shared centroid model this process assigns clusters with.",
            registry=r,
        )
