"""Poison records placed straight on any stage's input topic: dead-lettered, never blocking."""

from __future__ import annotations

import asyncio
import json

from iterrefine.app.pipeline import serve_pipeline
from iterrefine.config import Config
from iterrefine.consumers import PIPELINE
from iterrefine.io.ingest import Ingestor, RawRecord
from iterrefine.item.model import Item
from iterrefine.kafka.clients import make_producer, read_to_end
from iterrefine.kafka.topics import TopicNames, ensure_topics
from iterrefine.runtime import Output, Stage, StageRunner, decode_raw_record
from iterrefine.runtime.dlq import headers_dict
from iterrefine.runtime.serve import serve_stages
from iterrefine.runtime.stage import Limits, RecordLike
from iterrefine.sim import SimServer

from .helpers import alpaca, committed_vs_end, unique_config, wait_until
from .pipeline_support import pipeline_config, sample_records

#: Stage → its input topic, for every stage of the pipeline.
INPUTS = PIPELINE.inputs()
POISONS: list[bytes | None] = [
    b"[" * 1000 + b"]" * 1000,  # RecursionError in msgspec without the depth bound
    b'{"schema": "iterrefine.item/1", "id": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"schema": "iterrefine.item/1", "id": "x", "revision": ' + b"9" * 400 + b"}",
    b"\xff\xfe\x00garbage",
    None,  # a tombstone
    b'{"instruction": "a", "instruction": "b", "output": "c"}',
    b"NaN",
    b"{" * 70_000,  # over the raw record limit
]




async def produce_everywhere(config: Config, broker: str, topic: str) -> int:
    """Every poison into every partition of ``topic``; return how many were sent."""
    await ensure_topics(config.kafka, broker, PIPELINE.topics())
    producer = make_producer(config.kafka, broker)
    await producer.start()
    try:
        # Binary keys too: whoever wrote them, the DLQ and the exporter must cope.
        futures = [await producer.send(topic, poison, key=b"\xffpoison%d" % number,
                                       partition=partition)
                   for partition in range(config.kafka.partitions)
                   for number, poison in enumerate(POISONS)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(futures)


async def test_poison_on_every_stage_input_is_dead_lettered_and_commits_move_past(
    broker: str, sim: SimServer
) -> None:
    """Poison in every stage's input topic: DLQ per stage, every group commits to the end."""
    config = pipeline_config(broker, sim)
    names = TopicNames(config.kafka.topic_prefix)
    per_topic = {topic: await produce_everywhere(config, broker, names[topic])
                 for topic in set(INPUTS.values())}
    sent = {stage: per_topic[topic] for stage, topic in INPUTS.items()}  # each reader DLQs it
    runners: list[StageRunner] = []
    stop = asyncio.Event()
    task = asyncio.create_task(serve_pipeline(config, broker, stop=stop, simulated=True,
                                              runners_out=runners))
    try:
        await wait_until(lambda: len(runners) == len(INPUTS)
                         and all(r.ready.is_set() for r in runners), timeout_s=60)
        # Good items behind the poison, on the same partitions: they must get through.
        producer = make_producer(config.kafka, broker)
        await producer.start()
        try:
            ingestor = Ingestor(producer, names["items.raw"], names["items.dlq"])
            for number, record in enumerate(sample_records(40), start=1):
                await ingestor.send(RawRecord(json.dumps(record).encode(), number, "t"))
            await ingestor.flush()
        finally:
            await producer.stop()
        by_stage = {r.stage.name: r for r in runners}
        await wait_until(lambda: all(by_stage[s].dead_lettered >= n for s, n in sent.items()),
                         timeout_s=60)
        terminal = [names["items.curated"], names["items.rejected"]]
        await wait_until(
            lambda: _count(config, broker, terminal, expected=40), timeout_s=90, interval_s=0.5)
    finally:
        stop.set()
        await task

    dlq = await read_to_end(config.kafka, broker, [names["items.dlq"]])
    per_stage: dict[str, int] = {}
    for record in dlq:
        meta = headers_dict(record.headers)
        per_stage[meta["stage"]] = per_stage.get(meta["stage"], 0) + 1
        assert meta["reason"] and meta["message"] and record.key
    assert per_stage == sent
    for stage, topic in INPUTS.items():
        committed, ends = await committed_vs_end(config, broker, by_stage[stage].group_id, topic)
        assert committed == ends, f"{stage} did not commit past its poison"


async def _count(config: Config, broker: str, topics: list[str], *, expected: int) -> bool:
    records = await read_to_end(config.kafka, broker, topics)
    return len({r.key for r in records}) >= expected


async def test_a_decoder_raising_anything_dead_letters_only_that_record(broker: str) -> None:
    """A user decoder raising RecursionError/MemoryError: DLQ `undecodable`, partition moves on."""
    config = unique_config()
    names = TopicNames(config.kafka.topic_prefix)

    def fragile(record: RecordLike, limits: Limits) -> Item:
        if record.value == b"recursion":
            raise RecursionError("maximum recursion depth exceeded")
        if record.value == b"memory":
            raise MemoryError()
        return decode_raw_record(record, limits)

    async def passthrough(item: Item) -> list[Output]:
        return [Output("items.scored", item)]

    values = [alpaca(0), b"recursion", alpaca(1), b"memory", alpaca(2)]
    await ensure_topics(config.kafka, broker)
    producer = make_producer(config.kafka, broker)
    await producer.start()
    try:
        for value in values:  # one partition, in this order: the poison sits between items
            await (await producer.send(names["items.raw"], value, partition=0))
    finally:
        await producer.stop()
    stop = asyncio.Event()
    runners: list[StageRunner] = []
    stage = Stage("fragile", "items.raw", passthrough, decode=fragile, outputs=("items.scored",))
    task = asyncio.create_task(serve_stages([stage], config=config, bootstrap_servers=broker,
                                            stop=stop, runners_out=runners))
    await wait_until(lambda: bool(runners) and runners[0].handled + runners[0].dead_lettered >= 5)
    stop.set()
    await task
    dlq = await read_to_end(config.kafka, broker, [names["items.dlq"]])
    assert sorted(r.value for r in dlq) == [b"memory", b"recursion"]
    assert {headers_dict(r.headers)["reason"] for r in dlq} == {"undecodable"}
    assert len(await read_to_end(config.kafka, broker, [names["items.scored"]])) == 3
    committed, ends = await committed_vs_end(config, broker, runners[0].group_id, "items.raw")
    assert committed[0] == ends[0] == 5  # the partition moved past both poisons
