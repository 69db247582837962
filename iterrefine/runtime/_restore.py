"""Rebuilding a stateful handler's state from its partitions' history.

A :class:`~iterrefine.runtime.stage.StatefulHandler` (the online selection's running
ranks) decides each item from the items before it. Its state lives in memory, so a
worker that restarts, or is handed a partition another worker owned, would start from
nothing and decide differently from the worker before it. The history is in Kafka: the
input partitions hold every record the stage took, and the committed offsets say how far
it got. On every assignment the state is dropped and those records are replayed, from
each partition's log start up to its committed offset, before a new record is taken.
The handler is deterministic in the order of each partition's records, so the state is
the one the previous owner had (records that never decoded were dead-lettered before,
and are skipped here too).

Cost: one group-less read of the assigned partitions' retained history, decode and
replay (tens of microseconds an item), once per assignment. Retention bounds it: what
the broker no longer holds cannot be replayed, and the summary of a cluster older than
the retention then starts from the retained part.
"""

from __future__ import annotations

import time

import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from iterrefine.config import KafkaConfig
from iterrefine.kafka.clients import make_consumer
from iterrefine.runtime.stage import Limits, Stage, StatefulHandler

log = structlog.get_logger("iterrefine.runtime")

__all__ = ["replay_history"]

#: Records fetched per poll while replaying.
_BATCH = 10_000


async def replay_history(
    stage: Stage, handler: StatefulHandler, kafka: KafkaConfig, bootstrap_servers: str,
    committed: dict[TopicPartition, int | None], limits: Limits,
) -> int:
    """Reset ``handler``'s state and replay every record of ``committed``'s partitions
    below its committed offset; the number of items replayed."""
    handler.reset_state()
    todo = {tp: end for tp, end in committed.items() if end}
    if not todo:
        return 0
    started = time.perf_counter()
    consumer = make_consumer(kafka, bootstrap_servers, group_id=None)
    await consumer.start()
    try:
        replayed = skipped = 0
        for tp, end in sorted(todo.items(), key=lambda pair: pair[0].partition):
            taken, bad = await _replay_partition(consumer, stage, handler, tp, end, limits)
            replayed += taken
            skipped += bad
    finally:
        await consumer.stop()
    log.info("stage_state_replayed", stage=stage.name, items=replayed, undecodable=skipped,
             partitions=sorted(tp.partition for tp in todo),
             seconds=round(time.perf_counter() - started, 3))
    return replayed


async def _replay_partition(
    consumer: AIOKafkaConsumer, stage: Stage, handler: StatefulHandler, tp: TopicPartition,
    end: int, limits: Limits,
) -> tuple[int, int]:
    consumer.assign([tp])
    await consumer.seek_to_beginning(tp)
    replayed = skipped = 0
    while await consumer.position(tp) < end:
        batch = await consumer.getmany(tp, timeout_ms=1000, max_records=_BATCH)
        records = batch.get(tp, [])
        if not records:
            # A slow broker answers empty; so does one whose log ends before ``end``
            # (nothing more to replay there).
            if await _at_log_end(consumer, tp):
                break
            continue
        for record in records:
            if record.offset >= end:
                return replayed, skipped
            try:
                item = stage.decoder(record, limits)
            except Exception:  # any decoder failure: dead-lettered when it was first taken
                skipped += 1
                continue
            handler.replay(item)
            replayed += 1
    return replayed, skipped


async def _at_log_end(consumer: AIOKafkaConsumer, tp: TopicPartition) -> bool:
    ends: dict[TopicPartition, int] = await consumer.end_offsets([tp])
    position: int = await consumer.position(tp)
    return position >= ends[tp]
