"""One rank per cluster across route workers, on the real broker: each cluster's items go
to one partition, so one route worker or three give the same labels."""

from __future__ import annotations

import asyncio

import msgspec
import numpy as np
import pytest

from iterrefine.app.pipeline import pipeline_context
from iterrefine.config import Config, PipelineConfig, SelectionConfig, StaticPartitions
from iterrefine.consumers import route
from iterrefine.item.model import Difficulty, Item, Judgement, Selection, encode_item
from iterrefine.kafka.clients import make_producer, read_to_end
from iterrefine.kafka.topics import TopicNames, ensure_topics
from iterrefine.observe.metrics import Metrics
from iterrefine.runtime import Output, Stage, StageRunner
from iterrefine.testing import make_item

from .helpers import produce, unique_config, wait_until

PARTITIONS = 8


def _scored(n: int) -> list[Item]:
    """Items of 12 clusters whose judge-high shares differ, in a fixed arrival order."""
    rng = np.random.default_rng(12)
    shares = np.linspace(0.1, 0.95, 12)
    items = []
    for i in range(n):
        cluster = int(rng.integers(0, 12))
        level = 2 if rng.random() < shares[cluster] else 1
        items.append(make_item(
            instruction=f"Question {i}?",
            judgement=Judgement(usable=True, reason="", scores=None,
                                verdict="high" if level == 2 else "low", justification=""),
            difficulty=Difficulty(value=float(rng.random()), metric="instruction_ppl",
                                  model="m"),
            selection=Selection(cluster=cluster, model_version=1, mode="online")))
    return items


def _config() -> Config:
    base = unique_config()
    return msgspec.structs.replace(
        base, pipeline=PipelineConfig(routing_policy="cluster_quota"),
        selection=SelectionConfig(mode="online"))


async def _put_in_order(config: Config, broker: str, items: list[Item]) -> None:
    """items.scored as the score stage leaves it: a cluster's items on its one partition."""
    graph_topics = (*route.SPEC.outputs, route.SPEC.topic)
    await ensure_topics(config.kafka, broker, graph_topics)
    producer = make_producer(config.kafka, broker)
    await producer.start()
    try:
        topic = TopicNames(config.kafka.topic_prefix)["items.scored"]
        for item in items:  # one at a time: the log keeps this order
            assert item.selection is not None and item.selection.cluster is not None
            await producer.send_and_wait(topic, encode_item(item), key=item.id.encode(),
                                         partition=item.selection.cluster % PARTITIONS)
    finally:
        await producer.stop()


async def _labels(config: Config, broker: str, workers: int, n: int) -> dict[str, str]:
    """Route with ``workers`` route workers (each its own policy, as separate processes
    would have); the topic each item went to."""
    stop = asyncio.Event()
    runners = []
    for index in range(workers):
        share = msgspec.structs.replace(config, runtime=msgspec.structs.replace(
            config.runtime, static_partitions=StaticPartitions(index=index, count=workers)))
        ctx = pipeline_context(share, {}, Metrics(), simulated=True)
        runners.append(StageRunner(route.SPEC.build(ctx), config=share,
                                   bootstrap_servers=broker))
    tasks = [asyncio.create_task(r.run(stop)) for r in runners]
    await wait_until(lambda: sum(r.handled for r in runners) >= n, timeout_s=60)
    stop.set()
    await asyncio.gather(*tasks)
    names = TopicNames(config.kafka.topic_prefix)
    found = await read_to_end(config.kafka, broker, [names["items.curated"],
                                                     names["items.refine"]])
    assert len({r.key for r in found}) == n
    return {r.key.decode(): r.topic.rsplit(".", 1)[-1] for r in found}


@pytest.mark.slow
async def test_three_route_workers_give_the_same_labels_as_one(broker: str) -> None:
    """The same items.scored log routed by one route worker and by three (disjoint
    partition shares): every item gets the same label, because every cluster's running
    rank lives with the one worker that owns its partition."""
    items = _scored(600)
    labels = []
    for workers in (1, 3):
        config = _config()
        await _put_in_order(config, broker, items)
        labels.append(await _labels(config, broker, workers, len(items)))
    assert labels[0] == labels[1]
    assert 0.7 < sum(v == "curated" for v in labels[0].values()) / len(items) < 0.9


@pytest.mark.slow
async def test_an_output_with_partition_by_lands_on_its_owners_partition(broker: str) -> None:
    """Output(partition_by=c) is produced to partition c % partitions of its topic (the
    score stage's online outputs use the cluster id), whatever the input's partition."""
    config = _config()
    items = _scored(80)
    names = TopicNames(config.kafka.topic_prefix)
    await produce(config, broker, names["items.align"], [encode_item(i) for i in items],
                  keys=[i.id.encode() for i in items])

    def shard(item: Item) -> list[Output]:
        assert item.selection is not None
        return [Output("items.scored", item, partition_by=item.selection.cluster)]

    runner = StageRunner(Stage("shard", "items.align", shard, outputs=("items.scored",),
                               waits=False), config=config, bootstrap_servers=broker)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await wait_until(lambda: runner.handled >= len(items), timeout_s=60)
    stop.set()
    await task
    clusters = {i.id: i.selection.cluster for i in items if i.selection is not None}
    found = await read_to_end(config.kafka, broker, [names["items.scored"]])
    assert len(found) == len(items)
    assert all(r.partition == clusters[r.key.decode()] % PARTITIONS for r in found)


async def _route_once(config: Config, broker: str, n: int) -> None:
    """One route worker, its policy fresh as a new process's, until it routed ``n``."""
    share = msgspec.structs.replace(config, runtime=msgspec.structs.replace(
        config.runtime, static_partitions=StaticPartitions(index=0, count=1)))
    ctx = pipeline_context(share, {}, Metrics(), simulated=True)
    runner = StageRunner(route.SPEC.build(ctx), config=share, bootstrap_servers=broker)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await wait_until(lambda: runner.handled >= n, timeout_s=60)
    stop.set()
    await task


@pytest.mark.slow
async def test_a_route_worker_that_takes_over_ranks_as_the_one_before(kafka: str) -> None:
    """A route worker restarted halfway (or handed the partitions of one that stopped)
    rebuilds every cluster's running rank from the partitions' history up to the
    committed offsets before it routes: the second half gets the labels one
    uninterrupted worker gives, on both brokers. Starting from empty ranks, the same
    items got different labels."""
    items = _scored(600)
    whole = _config()
    await _put_in_order(whole, kafka, items)
    expected = await _labels(whole, kafka, 1, len(items))

    halves = _config()
    await _put_in_order(halves, kafka, items[:300])
    await _route_once(halves, kafka, 300)
    await _put_in_order(halves, kafka, items[300:])
    await _route_once(halves, kafka, 300)
    names = TopicNames(halves.kafka.topic_prefix)
    found = await read_to_end(halves.kafka, kafka, [names["items.curated"],
                                                     names["items.refine"]])
    assert len(found) == len(items)
    assert {r.key.decode(): r.topic.rsplit(".", 1)[-1] for r in found} == expected
