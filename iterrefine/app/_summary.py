"""The run summary: outcomes, rounds, quality before/after, LLM usage, wall time."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import Counter as PromCounter

from iterrefine.io.export import Terminal
from iterrefine.kafka.topics import TERMINAL_TOPICS
from iterrefine.llm import LLMStats
from iterrefine.llm.latency import percentile
from iterrefine.observe.metrics import Metrics
from iterrefine.runtime.stage import default_outcome


def _histogram(values: list[float]) -> dict[str, Any]:
    buckets = Counter(min(10, max(1, round(v))) for v in values)
    return {
        "count": len(values),
        "mean": round(sum(values) / len(values), 3) if values else None,
        "histogram": {str(k): buckets.get(k, 0) for k in range(1, 11)},
    }


def latency_from_samples(stats: LLMStats) -> dict[str, float | None]:
    """Mean (exact) and p50/p95/p99 of the raw request latencies one role's client kept.

    Raw timings, not histogram buckets: a bucket edge is not a measurement.
    """
    samples = stats.latency_samples_s
    return {
        "mean": round(stats.latency_sum_s / stats.requests, 4) if stats.requests else None,
        "max": round(max(samples), 4) if samples else None,
        **{name: _rounded(percentile(samples, q))
           for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))},
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def answers_by_task(metrics: Metrics) -> dict[str, dict[str, int]]:
    """How each task's answers read (first try / after re-ask / unreadable), truncations
    and replies cut short at a loop."""
    out: dict[str, dict[str, int]] = {}
    for family, kind in ((metrics.llm_answers_total, ""),
                         (metrics.llm_truncated_total, "truncated"),
                         (metrics.llm_looped_total, "looped")):
        for metric in family.collect():
            for sample in metric.samples:
                if not sample.name.endswith("_total"):
                    continue
                outcome = sample.labels.get("outcome", kind)
                row = out.setdefault(sample.labels["task"], {})
                row[outcome] = row.get(outcome, 0) + int(sample.value)
    return dict(sorted(out.items()))


def _counter_total(counter: PromCounter) -> int:
    return int(sum(s.value for m in counter.collect() for s in m.samples
                   if s.name.endswith("_total")))


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
    clusters: dict[str, Counter[str]] = {}
    difficulties: list[float] = []
    not_reasoning = 0
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
        not_reasoning += item.status_reason == "not_reasoning"
        if item.difficulty is not None:
            difficulties.append(item.difficulty.value)
        if item.selection is not None and item.quality is not None:
            cluster = "warmup" if item.selection.cluster is None else str(item.selection.cluster)
            clusters.setdefault(cluster, Counter())[item.quality] += 1
    llm = {
        role: {
            "requests": stats.requests,
            "errors": stats.errors,
            "retries": stats.retries,
            "prompt_tokens": stats.prompt_tokens,
            "completion_tokens": stats.completion_tokens,
            "latency_s": latency_from_samples(stats),
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
        **_selection(clusters, difficulties, not_reasoning),
        "llm_answers": answers_by_task(metrics),
        "rescore_failures": _counter_total(metrics.rescore_failures_total),
        "truncated": truncated_by_task(metrics),
    }


def _selection(
    clusters: dict[str, Counter[str]], difficulties: list[float], not_reasoning: int
) -> dict[str, Any]:
    """The paper's selection, when it ran: per-cluster sizes and high counts, difficulty."""
    if not clusters and not not_reasoning:
        return {}
    ordered = sorted(difficulties)
    return {"selection": {
        "not_reasoning": not_reasoning,
        "clusters": {c: {"items": sum(n.values()), "high": n["high"]}
                     for c, n in sorted(clusters.items())},
        "difficulty": {
            "count": len(ordered),
            "p50": ordered[len(ordered) // 2] if ordered else None,
            "min": ordered[0] if ordered else None,
            "max": ordered[-1] if ordered else None,
        },
    }}


def truncated_by_task(metrics: Metrics) -> dict[str, int]:
    """Answers cut off at max_tokens in this process, as ``{"role/task": count}``."""
    counts: dict[str, int] = {}
    for metric in metrics.llm_truncated_total.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.value:
                key = f"{sample.labels['role']}/{sample.labels['task']}"
                counts[key] = int(sample.value)
    return counts
