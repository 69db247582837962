"""Shared test utilities: unique topic sets, producing, waiting, reading results."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka.structs import TopicPartition

from iterrefine.config import Config, KafkaConfig, RuntimeConfig
from iterrefine.consumers import PIPELINE
from iterrefine.kafka.clients import make_consumer, make_producer, read_to_end, true_end_offsets
from iterrefine.kafka.topics import TopicNames, ensure_topics
from iterrefine.processes import descendants, pid_alive
from iterrefine.runtime import Stage, StageRunner
from iterrefine.runtime.serve import serve_stages

#: Short group timeouts: Tansu completes a join after about half the session timeout.
TEST_RUNTIME: dict[str, Any] = {
    "commit_interval_ms": 200,
    "drain_timeout_s": 10.0,
    "session_timeout_ms": 3000,
    "heartbeat_interval_ms": 500,
}


def unique_config(**runtime: Any) -> Config:
    """A config whose topics and groups no other test uses."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    return Config(
        kafka=KafkaConfig(topic_prefix=prefix, partitions=8),
        runtime=RuntimeConfig(**{**TEST_RUNTIME, **runtime}),
    )


def alpaca(i: int) -> bytes:
    return json.dumps(
        {"id": f"item-{i}", "instruction": f"Instruction {i}?", "input": "", "output": f"Out {i}."}
    ).encode()


async def produce(
    config: Config, bootstrap: str, topic: str, values: Sequence[bytes],
    keys: Sequence[bytes | None] | None = None,
) -> None:
    await ensure_topics(config.kafka, bootstrap, PIPELINE.topics())
    producer = make_producer(config.kafka, bootstrap)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, v, key=(keys[i] if keys else None))
            for i, v in enumerate(values)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def wait_until(
    predicate: Callable[[], Any], *, timeout_s: float = 60.0, interval_s: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval_s)


async def read_ids(config: Config, bootstrap: str, logical: str) -> list[str]:
    names = TopicNames(config.kafka.topic_prefix)
    records = await read_to_end(config.kafka, bootstrap, [names[logical]])
    return [r.key.decode() for r in records]


async def committed_vs_end(
    config: Config, bootstrap: str, group: str, logical: str
) -> tuple[dict[int, int | None], dict[int, int]]:
    """(committed offset per partition for ``group``, true end offset per partition)."""
    topic = TopicNames(config.kafka.topic_prefix)[logical]
    consumer = make_consumer(config.kafka, bootstrap, group_id=group)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(config.kafka.partitions)]
        committed = {tp.partition: await consumer.committed(tp) for tp in partitions}
    finally:
        await consumer.stop()
    reader = make_consumer(config.kafka, bootstrap, group_id=None)
    await reader.start()
    try:
        ends = await true_end_offsets(reader, partitions)
    finally:
        await reader.stop()
    return committed, {tp.partition: end for tp, end in ends.items()}


def sigkill_when_it_has_children(proc: subprocess.Popen[bytes], children: int = 2) -> list[int]:
    """SIGKILL ``proc`` once it has ``children`` descendants; their pids, none left alive.

    Survivors are killed (so a failing test leaves no orphans) and asserted absent.
    """
    try:
        deadline = time.monotonic() + 60
        while len(descendants(proc.pid)) < children and time.monotonic() < deadline:
            time.sleep(0.1)
        family = descendants(proc.pid)
        assert len(family) >= children
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 5
    while any(pid_alive(pid) for pid in family) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = [pid for pid in family if pid_alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert survivors == []
    return family


async def run_in_background(
    stage: Stage, config: Config, broker: str
) -> tuple[asyncio.Event, asyncio.Task[None], list[StageRunner]]:
    stop = asyncio.Event()
    runners: list[StageRunner] = []
    task = asyncio.create_task(
        serve_stages([stage], config=config, bootstrap_servers=broker, stop=stop,
                     runners_out=runners)
    )
    await wait_until(lambda: bool(runners) and runners[0].ready.is_set(), timeout_s=30)
    return stop, task, runners


async def run_until_done(
    stage: Stage, config: Config, broker: str, values: list[bytes], *,
    keys: list[bytes] | None = None, timeout_s: float = 60,
) -> StageRunner:
    """Produce ``values`` to items.raw, run ``stage`` until each was handled or
    dead-lettered, then stop it (drain, commit) and return its runner."""
    topics = TopicNames(config.kafka.topic_prefix)
    await produce(config, broker, topics["items.raw"], values, keys=keys)
    stop, task, runners = await run_in_background(stage, config, broker)
    await wait_until(lambda: runners[0].handled + runners[0].dead_lettered >= len(values),
                     timeout_s=timeout_s)
    stop.set()
    await task
    return runners[0]
