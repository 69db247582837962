"""The run summary: outcomes, rounds, quality before/after, LLM usage, wall time."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import Histogram

from iterrefine.export import Terminal
from iterrefine.llm import LLMStats
from iterrefine.metrics import Metrics
from iterrefine.runtime.stage import default_outcome
from iterrefine.topics import TERMINAL_TOPICS


def _histogram(values: list[float]) -> dict[str, Any]:
    buckets = Counter(min(10, max(1, round(v))) for v in values)
    return {
        "count": len(values),
        "mean": round(sum(values) / len(values), 3) if values else None,
        "histogram": {str(k): buckets.get(k, 0) for k in range(1, 11)},
    }


def _quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """histogram_quantile over cumulative (upper bound, count) pairs, like Prometheus."""
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower_bound
            width = count - lower_count
            fraction = (rank - lower_count) / width if width else 0.0
            return round(lower_bound + (upper - lower_bound) * fraction, 4)
        lower_bound, lower_count = upper, count
    return lower_bound


def latency_by_role(histogram: Histogram) -> dict[str, dict[str, float | None]]:
    per_role: dict[str, list[tuple[float, float]]] = {}
    sums: dict[str, float] = {}
    for metric in histogram.collect():
        for sample in metric.samples:
            role = sample.labels.get("role", "")
            if sample.name.endswith("_bucket"):
                per_role.setdefault(role, []).append((float(sample.labels["le"]), sample.value))
            elif sample.name.endswith("_sum"):
                sums[role] = sample.value
    out: dict[str, dict[str, float | None]] = {}
    for role, buckets in per_role.items():
        buckets.sort()
        count = buckets[-1][1] if buckets else 0
        out[role] = {
            "mean": round(sums.get(role, 0.0) / count, 4) if count else None,
            "p50": _quantile(0.5, buckets),
            "p95": _quantile(0.95, buckets),
            "p99": _quantile(0.99, buckets),
        }
    return out


def build_summary(
    terminals: Iterable[Terminal],
    *,
    items_in: int,
    invalid_at_ingest: int,
    wall_time_s: float,
    simulated: bool,
    llm_stats: Mapping[str, LLMStats],
    metrics: Metrics,
    duplicates_removed: int = 0,
) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    rounds: dict[str, Counter[str]] = {"converged": Counter(), "exhausted": Counter()}
    before: list[float] = []
    after: list[float] = []
    dlq_reasons: Counter[str] = Counter()
    counts = {default_outcome(topic): 0 for topic in TERMINAL_TOPICS}
    for terminal in terminals:
        counts[terminal.outcome] += 1
        item = terminal.item
        if item is None:
            outcomes["dlq"] += 1
            dlq_reasons[terminal.meta.get("reason", "unknown")] += 1
            continue
        # A refined item whose last revision never won (keep_last_revision) is its own
        # outcome: counting it as plain "refined" would overstate convergence.
        exhausted_refined = item.status == "refined" and item.converged is False
        outcomes["refined_unconverged" if exhausted_refined else item.status] += 1
        if item.status == "refined" and not exhausted_refined:
            rounds["converged"][str(item.round)] += 1
        elif item.status in ("unrefined", "dropped") or exhausted_refined:
            rounds["exhausted"][str(item.round)] += 1
        if item.judgement is not None and item.judgement.scores is not None:
            before.append(item.judgement.scores.mean)
        if item.final_judgement is not None and item.final_judgement.scores is not None:
            after.append(item.final_judgement.scores.mean)
    latency = latency_by_role(metrics.llm_seconds)
    llm = {
        role: {
            "requests": stats.requests,
            "errors": stats.errors,
            "retries": stats.retries,
            "prompt_tokens": stats.prompt_tokens,
            "completion_tokens": stats.completion_tokens,
            "latency_s": latency.get(role, {}),
            # Calls the response cache answered (each a request not paid for).
            "cache_hits": stats.cache_hits,
            "cache_misses": stats.cache_misses,
            "cache_tokens_saved": stats.cache_tokens_saved,
            "circuit_opened": stats.circuit_opened,
        }
        for role, stats in llm_stats.items()
    }
    return {
        "simulated": simulated,
        "wall_time_s": round(wall_time_s, 3),
        "items_in": items_in,
        "invalid_at_ingest": invalid_at_ingest,
        **counts,
        "outcomes": dict(outcomes),
        "rounds": {k: dict(sorted(v.items())) for k, v in rounds.items()},
        "quality": {"before": _histogram(before), "after": _histogram(after)},
        "dlq_reasons": dict(dlq_reasons),
        "duplicates_removed": duplicates_removed,
        "llm": llm,
        "truncated": truncated_by_task(metrics),
    }


def truncated_by_task(metrics: Metrics) -> dict[str, int]:
    """Answers cut off at max_tokens in this process, as ``{"role/task": count}``."""
    counts: dict[str, int] = {}
    for metric in metrics.llm_truncated_total.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.value:
                key = f"{sample.labels['role']}/{sample.labels['task']}"
                counts[key] = int(sample.value)
    return counts
