"""The durable embedded broker under a whole-machine crash: broker and workers SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.structs import TopicPartition

from iterrefine.cli.ingest import ingest
from iterrefine.config import Config, KafkaConfig
from iterrefine.io.export import load_rows
from iterrefine.io.ingest import read_records
from iterrefine.kafka.clients import make_consumer, true_end_offsets
from iterrefine.kafka.topics import TopicNames
from iterrefine.processes import free_port, pid_alive
from iterrefine.sim import SimConfig, SimServer

from .helpers import unique_config, wait_until
from .pipeline_support import newest, sample_records, write_jsonl
from .worker_procs import ROOT, WorkerProc, stop_all, write_worker_config

pytestmark = pytest.mark.slow  # long integration tests: `pytest -m "not slow"` skips them

SIM = SimConfig(latency_ms=30, jitter_ms=10, capacity=64, low_share=0.6, lose_prob=0.5,
                retry_after_s=0.05)


def cli(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "iterrefine.cli", *args], capture_output=True,
                          text=True, timeout=timeout_s, check=False, cwd=ROOT)


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A broker data dir; whatever broker it holds is stopped after the test."""
    path = tmp_path / "broker"
    yield path
    cli("broker", "down", "--data-dir", str(path))


@pytest.fixture
def sim_config() -> SimConfig:
    return SIM


def broker_up(data_dir: Path, port: int) -> dict[str, int | str]:
    up = cli("broker", "up", "--durable", "--data-dir", str(data_dir), "--port", str(port))
    assert up.returncode == 0, up.stdout + up.stderr
    state: dict[str, int | str] = json.loads((data_dir / "broker.json").read_text())
    return state


async def stale_end_offsets(kafka: KafkaConfig, bootstrap: str, topic: str) -> int:
    """Partitions whose ListOffsets(latest) answer is below the real end (Tansu's quirk)."""
    consumer = make_consumer(kafka, bootstrap, group_id=None)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(kafka.partitions)]
        reported = await consumer.end_offsets(partitions)
        real = await true_end_offsets(consumer, partitions)
        return sum(1 for tp in partitions if reported[tp] < real[tp])
    finally:
        await consumer.stop()


async def test_sigkill_of_broker_and_workers_then_restart_finishes_every_item_once(
    data_dir: Path, sim: SimServer, tmp_path: Path
) -> None:
    """Durable broker + worker SIGKILLed mid-run, restarted on the same data dir: all end once."""
    config: Config = unique_config(retry_base_s=0.02, retry_max_s=0.5)
    port = free_port()
    state = broker_up(data_dir, port)
    bootstrap = str(state["bootstrap_servers"])
    settings = write_worker_config(tmp_path / "worker.toml", config)
    worker_args = ["all", "--config", str(settings), "--data-dir", str(data_dir),
                   "--llm-base-url", sim.base_url, "--strong-model", "sim-strong",
                   "--backbone-model", "sim-backbone"]

    async def records():  # type: ignore[no-untyped-def]
        for record in read_records(write_jsonl(tmp_path / "in.jsonl", sample_records(150))):
            yield record

    report = await ingest(config, bootstrap, records())
    expected = set(report.ids)
    workers = [WorkerProc.start("before-crash", tmp_path, *worker_args)]
    try:
        async def finished() -> int:
            return len(set((await newest(config, bootstrap)).by_id) & expected)

        async def mid_run() -> bool:
            return len(expected) // 5 <= await finished() < len(expected) * 3 // 4

        await wait_until(mid_run, timeout_s=60, interval_s=0.2)
        before_crash = await finished()
        for pid in (int(state["pid"]), int(state["weed_pid"])):
            os.kill(pid, signal.SIGKILL)
        workers[0].kill()
        for pid in (int(state["pid"]), int(state["weed_pid"])):
            await wait_until(lambda pid=pid: not pid_alive(pid), timeout_s=10)  # type: ignore[misc]

        restarted_at = time.monotonic()
        state = broker_up(data_dir, port)  # same data dir, same port
        bootstrap = str(state["bootstrap_servers"])
        names = TopicNames(config.kafka.topic_prefix)
        stale = await stale_end_offsets(config.kafka, bootstrap, names["items.raw"])
        survived = await finished()
        assert survived >= before_crash  # results the broker acknowledged were not lost
        workers.append(WorkerProc.start("after-crash", tmp_path, *worker_args))

        async def all_finished() -> bool:
            return await finished() == len(expected)

        await wait_until(all_finished, timeout_s=90, interval_s=0.5)
        resumed_s = time.monotonic() - restarted_at
        assert workers[1].terminate() == 0, workers[1].tail()
    finally:
        stop_all(workers)

    export = cli("export", "-o", str(tmp_path / "out.jsonl"), "--data-dir", str(data_dir),
                 "--topic-prefix", config.kafka.topic_prefix)
    assert export.returncode == 0, export.stderr
    rows = [row for name in ("out.jsonl", "out.rejected.jsonl", "out.dlq.jsonl")
            for row in load_rows(tmp_path / name)]
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)) and set(ids) == expected  # each item exactly once
    print(f"\ndurable crash: {len(expected)} items, {before_crash} finished before the crash "
          f"({survived} after it), {stale} partitions with a stale ListOffsets end after restart, "
          f"finished {resumed_s:.1f} s after the broker came back; export: {export.stdout!r}")
