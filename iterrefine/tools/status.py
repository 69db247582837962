"""Where a running pipeline stands: per-stage lag from Kafka, live numbers from /metrics.

Lag comes from the broker alone: each stage's consumer group
(``{prefix}{stage}``) has committed offsets on its input topic, compared here
with the *true* end offsets (:func:`iterrefine.kafka.clients.true_end_offsets`; Tansu's
ListOffsets(latest) can be stale). Terminal topics are counted the same way
in records, and in items (distinct ids) by reading them (:mod:`iterrefine.io.completeness`):
at-least-once duplicates are counted apart, never as items.

In-flight messages, the items/s rate and the refinement rounds distribution
exist only inside the workers, so they come from their ``/metrics`` endpoints:
two scrapes ``interval_s`` apart, summed over all endpoints given.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from typing import TypeVar

import aiohttp
import msgspec
from aiokafka.structs import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from iterrefine.config import KafkaConfig
from iterrefine.errors import BrokerError
from iterrefine.io.completeness import Completeness, pipeline_completeness
from iterrefine.kafka.clients import make_consumer, true_end_offsets
from iterrefine.kafka.topics import TERMINAL_TOPICS, TopicNames

__all__ = [
    "PartitionLag",
    "PipelineStatus",
    "StageStatus",
    "WorkerMetrics",
    "metrics_url",
    "parse_worker_metrics",
    "pipeline_status",
    "rounds_distribution",
    "scrape_workers",
]

_K = TypeVar("_K")

class PartitionLag(msgspec.Struct, frozen=True, kw_only=True):
    partition: int
    end: int
    #: None: the group never committed here (it starts from the earliest offset).
    committed: int | None
    lag: int


class StageStatus(msgspec.Struct, frozen=True, kw_only=True):
    stage: str
    group: str
    topic: str
    end: int
    committed: int
    lag: int
    partitions: list[PartitionLag]
    #: From the workers' /metrics (None without endpoints).
    inflight: float | None = None
    items_per_s: float | None = None


class PipelineStatus(msgspec.Struct, frozen=True, kw_only=True):
    topic_prefix: str
    stages: list[StageStatus]
    #: Records in each terminal topic (logical name → count), duplicates included.
    terminal: dict[str, int]
    #: The pipeline in items (distinct ids): finished, duplicates, where the rest are.
    items: Completeness | None = None
    #: Refinement rounds per finished item, by outcome (converged/exhausted) then rounds.
    rounds: dict[str, dict[str, int]] | None = None
    #: The workers' LLM response cache, live from their /metrics: role → result → lookups.
    cache: dict[str, dict[str, float]] | None = None
    metrics_endpoints: list[str] = []
    metrics_errors: list[str] = []
    #: Seconds between the two scrapes the rates come from.
    rate_window_s: float | None = None


class WorkerMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """The numbers ``status`` needs from one or more scrapes, summed over endpoints."""

    inflight: dict[str, float] = {}
    items: dict[str, float] = {}
    #: outcome → upper bound ``le`` → cumulative count.
    rounds_buckets: dict[str, dict[float, float]] = {}
    #: LLM response cache lookups: role → result (hit, miss) → count.
    cache: dict[str, dict[str, float]] = {}

    def plus(self, other: WorkerMetrics) -> WorkerMetrics:
        """Both scrapes' numbers added up (several workers of one pipeline)."""
        def merged(a: dict[str, dict[_K, float]], b: dict[str, dict[_K, float]],
                   ) -> dict[str, dict[_K, float]]:
            return {key: _add(a.get(key, {}), b.get(key, {})) for key in a.keys() | b.keys()}

        return WorkerMetrics(inflight=_add(self.inflight, other.inflight),
                             items=_add(self.items, other.items),
                             rounds_buckets=merged(self.rounds_buckets, other.rounds_buckets),
                             cache=merged(self.cache, other.cache))


def _add(a: Mapping[_K, float], b: Mapping[_K, float]) -> dict[_K, float]:
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in a.keys() | b.keys()}


def metrics_url(address: str) -> str:
    """``host:port``, ``http://host:port`` or a full URL → the URL of ``/metrics``."""
    url = address.strip()
    if "://" not in url:
        url = f"http://{url}"
    scheme_end = url.index("://") + 3
    if "/" not in url[scheme_end:]:
        url += "/metrics"
    return url


def parse_worker_metrics(text: str) -> WorkerMetrics:
    """The iterrefine series ``status`` shows, from Prometheus text exposition format."""
    inflight: dict[str, float] = {}
    items: dict[str, float] = {}
    rounds: dict[str, dict[float, float]] = {}
    cache: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "iterrefine_inflight":
                stage = labels.get("stage", "")
                inflight[stage] = inflight.get(stage, 0.0) + sample.value
            elif sample.name == "iterrefine_items_total":
                stage = labels.get("stage", "")
                items[stage] = items.get(stage, 0.0) + sample.value
            elif sample.name == "iterrefine_refine_rounds_bucket":
                buckets = rounds.setdefault(labels.get("outcome", ""), {})
                le = float(labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
            elif sample.name == "iterrefine_llm_cache_total":
                results = cache.setdefault(labels.get("role", ""), {})
                result = labels.get("result", "")
                results[result] = results.get(result, 0.0) + sample.value
    return WorkerMetrics(inflight=inflight, items=items, rounds_buckets=rounds, cache=cache)


def rounds_distribution(cumulative: dict[float, float]) -> dict[str, int]:
    """Cumulative histogram buckets → items per number of rounds ("1", "2", "7-8", ">10")."""
    out: dict[str, int] = {}
    previous_le, previous_count = 0.0, 0.0
    for le in sorted(cumulative):
        count = cumulative[le] - previous_count
        if count > 0:
            if math.isinf(le):
                label = f">{previous_le:g}"
            elif le - previous_le <= 1:
                label = f"{le:g}"
            else:
                label = f"{previous_le + 1:g}-{le:g}"
            out[label] = round(count)
        previous_le, previous_count = le, cumulative[le]
    return out


async def _scrape_once(
    http: aiohttp.ClientSession, urls: Sequence[str]
) -> tuple[WorkerMetrics, list[str]]:
    async def one(url: str) -> WorkerMetrics | str:
        try:
            async with http.get(url) as response:
                if response.status != 200:
                    return f"{url}: HTTP {response.status}"
                return parse_worker_metrics(await response.text())
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return f"{url}: {type(exc).__name__}: {exc}"

    total = WorkerMetrics()
    errors: list[str] = []
    for answer in await asyncio.gather(*(one(url) for url in urls)):
        if isinstance(answer, str):
            errors.append(answer)
        else:
            total = total.plus(answer)
    return total, errors


async def scrape_workers(
    urls: Sequence[str], *, interval_s: float = 1.0, timeout_s: float = 5.0
) -> tuple[WorkerMetrics, WorkerMetrics, float, list[str]]:
    """Two scrapes of every endpoint ``interval_s`` apart: (first, second, seconds, errors)."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        started = time.monotonic()
        first, errors = await _scrape_once(http, urls)
        await asyncio.sleep(interval_s)
        second, later_errors = await _scrape_once(http, urls)
        elapsed = time.monotonic() - started
    return first, second, elapsed, sorted(set(errors) | set(later_errors))


async def _committed(
    config: KafkaConfig, bootstrap: str, group: str, partitions: list[TopicPartition]
) -> dict[TopicPartition, int | None]:
    # A consumer that never subscribes only asks the group coordinator (OffsetFetch):
    # it does not join the group, so the running workers are not rebalanced.
    consumer = make_consumer(config, bootstrap, group_id=group)
    await consumer.start()
    try:
        return {tp: await consumer.committed(tp) for tp in partitions}
    finally:
        await consumer.stop()


async def _offsets(
    config: KafkaConfig, bootstrap: str, logical_topics: Sequence[str],
) -> tuple[dict[str, list[TopicPartition]], dict[TopicPartition, int],
           dict[TopicPartition, int]]:
    """(partitions by full topic name, start offsets, true end offsets) of the topics."""
    names = TopicNames(config.topic_prefix)
    reader = make_consumer(config, bootstrap, group_id=None)
    await reader.start()
    try:
        by_topic: dict[str, list[TopicPartition]] = {}
        for logical in logical_topics:
            topic = names[logical]
            by_topic[topic] = [
                TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or ())
            ]
        if not any(by_topic.values()):
            raise BrokerError(
                f"no iterrefine topics with prefix {config.topic_prefix!r} on {bootstrap}: "
                "nothing has run there yet, or pass the pipeline's --topic-prefix"
            )
        everything = [tp for tps in by_topic.values() for tp in tps]
        starts: dict[TopicPartition, int] = await reader.beginning_offsets(everything)
        ends = await true_end_offsets(reader, everything)
    finally:
        await reader.stop()
    return by_topic, starts, ends


def _stage_row(
    stage: str, group: str, topic: str, committed: Mapping[TopicPartition, int | None],
    starts: Mapping[TopicPartition, int], ends: Mapping[TopicPartition, int],
    live: tuple[WorkerMetrics, WorkerMetrics, float] | None,
) -> StageStatus:
    """One stage's lag per partition, with its live numbers when the workers were scraped."""
    partitions = [
        PartitionLag(
            partition=tp.partition, end=ends[tp], committed=offset,
            lag=max(0, ends[tp] - (offset if offset is not None else starts.get(tp, 0))),
        )
        for tp, offset in committed.items()
    ]
    inflight = rate = None
    if live is not None and live[2]:
        first, second, window = live
        inflight = second.inflight.get(stage, 0.0)
        done = second.items.get(stage, 0.0) - first.items.get(stage, 0.0)
        rate = round(max(0.0, done) / window, 3)  # a restarted worker resets its counter
    return StageStatus(
        stage=stage, group=group, topic=topic, end=sum(p.end for p in partitions),
        committed=sum(p.committed or 0 for p in partitions),
        lag=sum(p.lag for p in partitions), partitions=partitions, inflight=inflight,
        items_per_s=rate,
    )


async def pipeline_status(
    config: KafkaConfig,
    bootstrap: str,
    *,
    stage_inputs: Mapping[str, str],
    metrics_urls: Sequence[str] = (),
    interval_s: float = 1.0,
    count_items: bool = True,
) -> PipelineStatus:
    """Lag per stage and terminal counts from the broker, plus the workers' live numbers.

    ``stage_inputs``: stage name → logical input topic, from the stage graph
    (:meth:`iterrefine.graph.spec.StageGraph.inputs`); each stage's group is prefix + name.
    ``count_items``: also read the topics to count items (distinct ids), duplicates apart,
    and where the unfinished ones are (:mod:`iterrefine.io.completeness`).
    """
    names = TopicNames(config.topic_prefix)
    by_topic, starts, ends = await _offsets(
        config, bootstrap, [*dict.fromkeys(stage_inputs.values()), *TERMINAL_TOPICS])
    groups = {stage: f"{config.topic_prefix}{stage}" for stage in stage_inputs}
    committed_by_stage = await asyncio.gather(*(
        _committed(config, bootstrap, groups[stage], by_topic[names[logical]])
        for stage, logical in stage_inputs.items()
    ))
    live: tuple[WorkerMetrics, WorkerMetrics, float] | None = None
    errors: list[str] = []
    urls = [metrics_url(u) for u in metrics_urls]
    if urls:
        first, second, window, errors = await scrape_workers(urls, interval_s=interval_s)
        live = (first, second, window)
    stages = [
        _stage_row(stage, groups[stage], names[logical], committed, starts, ends, live)
        for (stage, logical), committed in zip(stage_inputs.items(), committed_by_stage,
                                               strict=True)
    ]
    terminal = {
        logical: sum(ends[tp] - starts.get(tp, 0) for tp in by_topic[names[logical]])
        for logical in TERMINAL_TOPICS
    }
    items = await pipeline_completeness(config, bootstrap, stage_inputs.values()) \
        if count_items else None
    return PipelineStatus(
        topic_prefix=config.topic_prefix, stages=stages, terminal=terminal, items=items,
        rounds=None if live is None else {
            outcome: rounds_distribution(buckets)
            for outcome, buckets in sorted(live[1].rounds_buckets.items())},
        cache=None if live is None else live[1].cache,
        metrics_endpoints=urls, metrics_errors=errors,
        rate_window_s=round(live[2], 3) if live is not None else None,
    )
