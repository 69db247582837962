"""What a route worker pays to take over: the online ranks rebuilt from history.

A route worker handed partitions (start, restart, rebalance) replays each partition's
records up to the committed offset into fresh ranks before it routes
(``iterrefine.runtime._restore``). This puts ``--items`` scored items with online
cluster ids in ``items.scored`` of the embedded broker, routes them once (the offsets
committed), then times the replay a fresh route worker runs on its assignment, and
checks the rebuilt ranks equal the routed ones.

Run ``python benchmarks/selection_replay.py [--items 20000]``; JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import harness
import numpy as np

from iterrefine.app.pipeline import pipeline_context
from iterrefine.config import Config, PipelineConfig, SelectionConfig, StaticPartitions
from iterrefine.consumers import route
from iterrefine.item.model import Difficulty, Judgement, Selection, decode_item, encode_item
from iterrefine.observe.metrics import Metrics
from iterrefine.runtime import StageRunner
from iterrefine.runtime._restore import replay_history
from iterrefine.selection.policy import ClusterQuotaPolicy
from iterrefine.testing import make_item


async def _put_by_owner(config: Config, bootstrap: str, values: list[bytes]) -> None:
    """``items.scored`` as the score stage writes it: a cluster's items on partition
    ``cluster % partitions``, in order."""
    from iterrefine.consumers import PIPELINE
    from iterrefine.kafka.clients import make_producer
    from iterrefine.kafka.topics import TopicNames, ensure_topics

    await ensure_topics(config.kafka, bootstrap, PIPELINE.topics())
    topic = TopicNames(config.kafka.topic_prefix)["items.scored"]
    producer = make_producer(config.kafka, bootstrap, linger_ms=5)
    await producer.start()
    try:
        partitions = len(await producer.partitions_for(topic))
        futures = []
        for value in values:
            item = decode_item(value)
            assert item.selection is not None and item.selection.cluster is not None
            futures.append(await producer.send(
                topic, value, key=item.id.encode(),
                partition=item.selection.cluster % partitions))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _scored(n: int) -> list[bytes]:
    rng = np.random.default_rng(5)
    out = []
    for i in range(n):
        level = 2 if rng.random() < 0.7 else 1
        out.append(encode_item(make_item(
            instruction=f"Question {i}?",
            judgement=Judgement(usable=True, reason="", scores=None,
                                verdict="high" if level == 2 else "low", justification=""),
            difficulty=Difficulty(value=float(rng.random()), metric="instruction_ppl",
                                  model="m"),
            selection=Selection(cluster=int(rng.integers(0, 132)), model_version=1,
                                mode="online"))))
    return out


def _ranks(handler: object) -> dict[int | None, tuple[int, int]]:
    """(items seen, kept high) per cluster of a route handler's online quota."""
    assert isinstance(handler, route.RankingRoute)
    assert isinstance(handler.policy, ClusterQuotaPolicy)
    return handler.policy.quota.sizes()


async def _measure(bootstrap: str, prefix: str, n: int) -> dict[str, Any]:
    config = harness.bench_config(bootstrap, prefix,
                                  pipeline=PipelineConfig(routing_policy="cluster_quota"))
    import msgspec

    config = msgspec.structs.replace(
        config, selection=SelectionConfig(mode="online"),
        runtime=msgspec.structs.replace(
            config.runtime, static_partitions=StaticPartitions(index=0, count=1)))
    await _put_by_owner(config, bootstrap, _scored(n))
    first = route.SPEC.build(pipeline_context(config, {}, Metrics(), simulated=True))
    runner = StageRunner(first, config=config, bootstrap_servers=bootstrap)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    while runner.handled < n:  # noqa: ASYNC110  # a count, not an event, says when
        await asyncio.sleep(0.05)
    stop.set()
    await task
    routed = first.stateful
    assert routed is not None
    committed = runner._commits.committed_offsets()  # the ends the group committed
    fresh = route.SPEC.build(pipeline_context(config, {}, Metrics(), simulated=True))
    stateful = fresh.stateful
    assert stateful is not None
    started = time.perf_counter()
    replayed = await replay_history(fresh, stateful, config.kafka, bootstrap, committed,
                                    runner._limits)
    seconds = time.perf_counter() - started
    same = _ranks(stateful) == _ranks(routed)
    return {"items": n, "replayed": replayed, "seconds": round(seconds, 3),
            "items_per_s": round(replayed / seconds, 1),
            "us_per_item": round(seconds / max(1, replayed) * 1e6, 1),
            "ranks_equal_the_routed_ones": same}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    args = parser.parse_args(argv)
    harness.quiet_logging()
    load_before = harness.loadavg()
    with harness.bench_session(quick=False) as bench:
        result = asyncio.run(_measure(bench.bootstrap, bench.prefix("replay"), args.items))
    print(json.dumps({"benchmark": "selection_replay", "date": harness.now_iso(),
                      "machine": harness.machine(), "loadavg_before": load_before,
                      "loadavg_after": harness.loadavg(), "results": result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
