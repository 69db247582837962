"""The run summary: outcomes, rounds, quality before/after, LLM usage, wall time."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import Counter as PromCounter

from iterrefine.io.export import Terminal
from iterrefine.item.model import Item
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
    like_for_like = _LikeForLike()
    dlq_reasons: Counter[str] = Counter()
    counts = {default_outcome(topic): 0 for topic in TERMINAL_TOPICS}
    clusters: dict[str, Counter[str]] = {}
    difficulties: list[float] = []
    not_reasoning = 0
    modes: Counter[str] = Counter()
    # Marked by what answered: any simulated answer or item makes the whole run simulated.
    simulated = simulated or any(s.simulated_answers for s in llm_stats.values())
    for terminal in terminals:
        counts[terminal.outcome] += 1
        item = terminal.item
        if item is None:
            outcomes["dlq"] += 1
            dlq_reasons[terminal.meta.get("reason", "unknown")] += 1
            continue
        # A refined item whose last revision never won (keep_last_revision) is its own
        # outcome: counting it as plain "refined" would overstate convergence.
        simulated = simulated or item.provenance.simulated
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
        like_for_like.add(item)
        # Rejected by the task filter: no reasoning, or (``task_filter_unstated = "reject"``)
        # the judge did not say.
        not_reasoning += item.status_reason in ("not_reasoning", "reasoning_unstated")
        if item.difficulty is not None:
            difficulties.append(item.difficulty.value)
        if item.selection is not None and item.quality is not None:
            cluster = "warmup" if item.selection.cluster is None else str(item.selection.cluster)
            clusters.setdefault(cluster, Counter())[item.quality] += 1
            modes[item.selection.mode or "unknown"] += 1
    llm = _llm_rows(llm_stats)
    return {
        "simulated": simulated,
        "wall_time_s": round(wall_time_s, 3),
        "items_in": items_in,
        "invalid_at_ingest": invalid_at_ingest,
        **counts,
        "outcomes": dict(outcomes),
        "rounds": {k: dict(sorted(v.items())) for k, v in rounds.items()},
        # before: every scored item; after: the re-scored refined ones. Compare like with
        # like through "refined" (the same items, before → after) and "kept".
        "quality": {"before": _histogram(before), "after": _histogram(after),
                    **like_for_like.summary()},
        "dlq_reasons": dict(dlq_reasons),
        "duplicates_removed": duplicates_removed,
        "llm": llm,
        **_selection(clusters, difficulties, not_reasoning, modes),
        "llm_answers": answers_by_task(metrics),
        "rescore_failures": _counter_total(metrics.rescore_failures_total),
        "truncated": truncated_by_task(metrics),
    }


class _LikeForLike:
    """Judge scores of the same items before and after refinement, and of the items kept."""

    def __init__(self) -> None:
        self.refined: list[tuple[float, float]] = []
        #: Refined items curated without a final score (the re-score failed or is off).
        self.refined_unscored = 0
        self.kept: dict[str, list[float]] = {"high": [], "unrefined": []}

    def add(self, item: Item) -> None:
        before = item.judgement.scores if item.judgement is not None else None
        if before is None:
            return
        if item.status == "refined":
            final = item.final_judgement
            if final is None or final.scores is None:
                self.refined_unscored += 1
            else:
                self.refined.append((before.mean, final.scores.mean))
        elif item.status in self.kept:
            self.kept[item.status].append(before.mean)

    def summary(self) -> dict[str, Any]:
        pairs = self.refined
        before = _mean([b for b, _ in pairs])
        after = _mean([a for _, a in pairs])
        return {
            "refined": {
                "count": len(pairs), "before_mean": before, "after_mean": after,
                "change_mean": None if before is None or after is None
                else round(after - before, 3),
                "without_final_score": self.refined_unscored,
            },
            "kept": {status: {"count": len(scores), "mean": _mean(scores)}
                     for status, scores in self.kept.items()},
        }


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def _llm_rows(llm_stats: Mapping[str, LLMStats]) -> dict[str, dict[str, Any]]:
    """Per role: requests, errors, tokens, latency, and what the cache and hedging did."""
    return {
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
            "cache_rejected": stats.cache_rejected,
            "hedged": stats.hedged,
            "circuit_opened": stats.circuit_opened,
        }
        for role, stats in llm_stats.items()
    }


def _selection(
    clusters: dict[str, Counter[str]], difficulties: list[float], not_reasoning: int,
    modes: Counter[str],
) -> dict[str, Any]:
    """The paper's selection, when it ran: how many items were clustered and by which
    mode, per-cluster sizes and high counts, difficulty."""
    if not clusters and not not_reasoning:
        return {}
    ordered = sorted(difficulties)
    warmup = sum(clusters.get("warmup", Counter()).values())
    return {"selection": {
        "mode": "+".join(sorted(modes)) or None,
        "clustered": sum(sum(n.values()) for n in clusters.values()) - warmup,
        "unclustered_warmup": warmup,
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
