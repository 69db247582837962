"""Idle means idle: a consumer with nothing to read rests (no fetches), and a record
produced in the same process wakes it at once (real embedded broker)."""

from __future__ import annotations

import asyncio
import time
import uuid

import msgspec
import pytest
from aiokafka.structs import TopicPartition

from iterrefine.app.run import SHARED_WATCHER_REST_MS, watcher_rest_ms
from iterrefine.config import Config, KafkaConfig
from iterrefine.kafka.clients import make_consumer, make_producer
from iterrefine.kafka.idle import DOORBELLS, EMPTY_POLLS_BEFORE_REST, FIRST_REST_S, IdleRest
from iterrefine.kafka.topics import ensure_topics


async def test_a_resting_consumer_is_woken_by_a_produced_record(broker: str) -> None:
    """After enough empty polls the consumer rests with its partitions paused; a record
    sent (and rung) in this process ends the rest well before its timer, and is read."""
    config = KafkaConfig(topic_prefix=f"idle{uuid.uuid4().hex[:8]}.", partitions=1)
    await ensure_topics(config, broker, ["items.raw"])
    topic = f"{config.topic_prefix}items.raw"
    consumer = make_consumer(config, broker, group_id=None, fetch_max_wait_ms=100)
    producer = make_producer(config, broker)
    await consumer.start()
    await producer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        idle = IdleRest(consumer, [topic], max_rest_s=30.0)
        for _ in range(EMPTY_POLLS_BEFORE_REST):
            batch = await consumer.getmany(timeout_ms=50)
            idle.polled(sum(map(len, batch.values())))
        assert idle.due
        resting = asyncio.create_task(idle.rest())
        await asyncio.sleep(0.05)
        assert consumer.paused() == {TopicPartition(topic, 0)}
        started = time.monotonic()
        await producer.send_and_wait(topic, b"hello", partition=0)
        DOORBELLS.ring(topic)
        await asyncio.wait_for(resting, 5)
        assert time.monotonic() - started < FIRST_REST_S + 0.2
        assert not consumer.paused() and not idle.due
        got = await consumer.getmany(timeout_ms=2000)
        assert [r.value for rs in got.values() for r in rs] == [b"hello"]
    finally:
        await producer.stop()
        await consumer.stop()


async def test_unrung_rests_double_up_to_the_limit(broker: str) -> None:
    """Without a bell each rest lasts its timer, doubling from FIRST_REST_S to the limit;
    a limit of 0 never rests."""
    config = KafkaConfig(topic_prefix=f"idle{uuid.uuid4().hex[:8]}.", partitions=1)
    await ensure_topics(config, broker, ["items.raw"])
    topic = f"{config.topic_prefix}items.raw"
    consumer = make_consumer(config, broker, group_id=None)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        idle = IdleRest(consumer, [topic], max_rest_s=2 * FIRST_REST_S)
        for _ in range(EMPTY_POLLS_BEFORE_REST):
            idle.polled(0)
        lengths = []
        for _ in range(3):
            started = time.monotonic()
            await idle.rest()
            lengths.append(time.monotonic() - started)
            idle.polled(0)
            assert idle.due
        assert FIRST_REST_S * 0.9 <= lengths[0] < FIRST_REST_S * 1.8
        assert all(2 * FIRST_REST_S * 0.9 <= n < 2 * FIRST_REST_S * 1.6 for n in lengths[1:])
        never = IdleRest(consumer, [topic], max_rest_s=0)
        for _ in range(10):
            never.polled(0)
        assert not never.due
    finally:
        await consumer.stop()


async def test_a_stage_output_and_ingest_ring_their_topics(broker: str) -> None:
    """What a stage produces (Delivery.send) and what ingest sends ring the doorbell of
    their topic, so a consumer resting on it in this process wakes at once."""
    from prometheus_client import CollectorRegistry

    from iterrefine.io.ingest import Ingestor, RawRecord
    from iterrefine.observe.metrics import Metrics
    from iterrefine.retry import Backoff
    from iterrefine.runtime._delivery import Delivery
    from iterrefine.runtime._messages import Outgoing
    from iterrefine.runtime._window import Window

    config = KafkaConfig(topic_prefix=f"idle{uuid.uuid4().hex[:8]}.", partitions=1)
    await ensure_topics(config, broker, ["items.raw", "items.scored", "items.dlq"])
    raw, scored = f"{config.topic_prefix}items.raw", f"{config.topic_prefix}items.scored"
    consumer = make_consumer(config, broker, group_id=None)
    producer = make_producer(config, broker)
    await consumer.start()
    await producer.start()
    bells = {topic: asyncio.Event() for topic in (raw, scored)}
    for topic, bell in bells.items():
        DOORBELLS.listen([topic], bell)
    try:
        consumer.assign([TopicPartition(raw, 0)])
        metrics = Metrics(registry=CollectorRegistry())
        delivery = Delivery("score", producer=producer, consumer=consumer, input_topic=raw,
                            window=Window(8, gauge=metrics.inflight.labels("score")),
                            backoff=Backoff(), metrics=metrics)
        await delivery.send([Outgoing(topic=scored, key=b"k", value=b"{}", outcome="scored")], 0)
        assert bells[scored].is_set()
        ingestor = Ingestor(producer, raw, f"{config.topic_prefix}items.dlq")
        await ingestor.send(RawRecord(b'{"instruction": "Q?", "output": "A."}', 1, "t"))
        assert bells[raw].is_set()
    finally:
        for topic, bell in bells.items():
            DOORBELLS.forget([topic], bell)
        await producer.stop()
        await consumer.stop()


@pytest.mark.unit
def test_a_run_alone_lets_its_watcher_rest_as_long_as_its_stages() -> None:
    """Alone on its own broker every terminal record is produced in the run's process and
    rings the watcher awake, so it rests like the stages (measured by
    benchmarks/idle_cpu.py: 2.9% of a core before, 1.1% after); when another process may
    produce the last item the watcher keeps polling every 2 s, and resting off stays off."""
    config = Config()
    stages_ms = config.runtime.idle_poll_max_ms
    assert stages_ms > SHARED_WATCHER_REST_MS
    assert watcher_rest_ms(config, alone=True) == stages_ms
    assert watcher_rest_ms(config, alone=False) == SHARED_WATCHER_REST_MS
    never = msgspec.structs.replace(config, runtime=msgspec.structs.replace(
        config.runtime, idle_poll_max_ms=0))
    assert watcher_rest_ms(never, alone=True) == watcher_rest_ms(never, alone=False) == 0
