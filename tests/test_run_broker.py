"""The broker `iterrefine run` starts for itself: memory storage, or scratch disk when big."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from iterrefine.app._run_broker import (
    SCRATCH_PREFIX,
    choose_storage,
    input_bytes,
    remove_stale_scratch,
    start_run_broker,
)
from iterrefine.config import BrokerConfig, Config, load_config
from iterrefine.errors import ConfigError
from iterrefine.io.ingest import RawRecord
from iterrefine.io.inputs import InputSpec
from iterrefine.processes import pid_alive

from .helpers import sigkill_when_it_has_children

MB = 1024 * 1024
SAMPLE = Path(__file__).parent.parent / "examples" / "dolly_sample.jsonl"


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.unit
def test_auto_storage_goes_to_disk_from_the_threshold_on() -> None:
    """auto: memory below disk_above_mb, disk at and above it."""
    settings = BrokerConfig(disk_above_mb=2.0)
    assert choose_storage(settings, 2 * MB - 1) == "memory"
    assert choose_storage(settings, 2 * MB) == "disk"
    assert choose_storage(BrokerConfig(), 200_000 * 110) == "disk"  # the 200k benchmark input


@pytest.mark.unit
def test_unknown_size_keeps_memory_and_a_forced_storage_wins() -> None:
    """A hub id of unknown size stays in memory under auto; memory/disk ignore the size."""
    assert choose_storage(BrokerConfig(), None) == "memory"
    assert choose_storage(BrokerConfig(storage="disk"), 10) == "disk"
    assert choose_storage(BrokerConfig(storage="memory"), 10**12) == "memory"


@pytest.mark.unit
def test_the_readme_sample_stays_in_memory() -> None:
    """The 120-item sample (fast start matters there) is far below the default threshold."""
    size = input_bytes(InputSpec(str(SAMPLE)), None)
    assert size == SAMPLE.stat().st_size
    assert choose_storage(BrokerConfig(), size) == "memory"


@pytest.mark.unit
def test_input_bytes_of_a_file_a_dataset_dir_a_trial_and_a_hub_id(tmp_path: Path) -> None:
    """File size; a directory's total; a trial as N first-record sizes (capped); hub id unknown."""
    data = tmp_path / "in.jsonl"
    data.write_bytes(b"x" * 5000)
    saved = tmp_path / "saved"
    (saved / "train").mkdir(parents=True)
    (saved / "dataset_dict.json").write_bytes(b"{}")
    (saved / "train" / "data-00000.arrow").write_bytes(b"y" * 3000)
    first = RawRecord(data=b"z" * 100, line=1, origin="in.jsonl")
    assert input_bytes(InputSpec(str(data)), first) == 5000
    assert input_bytes(InputSpec(str(saved)), None) == 3002
    assert input_bytes(InputSpec(str(data), limit=10), first) == 1000
    assert input_bytes(InputSpec(str(data), sample=10**6), first) == 5000
    assert input_bytes(InputSpec("someone/dataset", format="hf"), first) is None
    assert input_bytes(InputSpec("someone/dataset", format="hf", limit=7), first) == 700


@pytest.mark.unit
def test_broker_table_parses_and_rejects_unknown_storage(tmp_path: Path) -> None:
    """[broker] storage/disk_above_mb come from the file; a wrong storage is a ConfigError."""
    good = tmp_path / "good.toml"
    good.write_text('[broker]\nstorage = "disk"\ndisk_above_mb = 8\n')
    assert load_config(good).broker == BrokerConfig(storage="disk", disk_above_mb=8.0)
    bad = tmp_path / "bad.toml"
    bad.write_text('[broker]\nstorage = "tape"\n')
    with pytest.raises(ConfigError):
        load_config(bad)


def test_stale_scratch_stores_of_dead_runs_are_removed(tmp_path: Path) -> None:
    """A dead run's scratch dir goes; a live run's (here: this process's) and other dirs stay."""
    dead = tmp_path / f"{SCRATCH_PREFIX}{_dead_pid()}"
    live = tmp_path / f"{SCRATCH_PREFIX}{os.getpid()}"
    other = tmp_path / "s3"
    for path in (dead, live, other):
        (path / "sub").mkdir(parents=True)
    assert remove_stale_scratch(tmp_path) == [dead]
    assert not dead.exists() and live.exists() and other.exists()


def test_small_input_gets_a_memory_broker(tmp_path: Path) -> None:
    """auto with a small size starts plain Tansu on memory storage (no SeaweedFS)."""
    bootstrap, broker = start_run_broker(tmp_path, BrokerConfig(), 1000)
    assert broker is not None
    try:
        assert not broker.durable and broker.weed_pid is None and bootstrap
    finally:
        broker.stop()


def _proc(pid: int, name: str) -> list[bytes]:
    """The NUL-separated entries of /proc/PID/NAME (environ, cmdline)."""
    return Path(f"/proc/{pid}/{name}").read_bytes().split(b"\0")


async def _round_trip(bootstrap: str) -> bytes:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait("scratch-check", b"kept on disk", partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition("scratch-check", 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        message = await asyncio.wait_for(consumer.getone(), timeout=20)
        return bytes(message.value or b"")
    finally:
        await consumer.stop()


async def test_disk_broker_is_lean_works_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """A disk broker round-trips a record; weed runs lean; stop kills both, deletes the store."""
    bootstrap, broker = await asyncio.to_thread(
        start_run_broker, tmp_path, BrokerConfig(storage="disk"), None)
    assert broker is not None and broker.weed_pid is not None and broker.pid is not None
    pids = (broker.pid, broker.weed_pid)
    scratch = tmp_path / f"{SCRATCH_PREFIX}{os.getpid()}"
    try:
        assert broker.scratch and broker.data_dir == scratch and (scratch / "s3").is_dir()
        assert any(var.startswith(b"GOMEMLIMIT=") for var in _proc(broker.weed_pid, "environ"))
        assert b"-volume.index=leveldb" in _proc(broker.weed_pid, "cmdline")
        assert await _round_trip(bootstrap) == b"kept on disk"
    finally:
        await asyncio.to_thread(broker.stop)
    assert not scratch.exists()
    assert not any(pid_alive(pid) for pid in pids)


def _run(tmp_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "iterrefine.cli", "run", str(SAMPLE), "-o",
         str(tmp_path / "o.jsonl"), "--llm", "sim", "--no-progress", "--log-level", "warning",
         "--data-dir", str(tmp_path / "d"), "--broker-storage", "disk", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_disk_run_dies_whole_on_sigkill_and_the_next_run_cleans_up(tmp_path: Path) -> None:
    """kill -9 of a disk run takes tansu and weed along; the next run finishes and removes
    the scratch store the killed one left."""
    with _run(tmp_path, "--sim-latency-ms", "2000") as proc:
        sigkill_when_it_has_children(proc)  # weed, then tansu
    assert list((tmp_path / "d").glob(f"{SCRATCH_PREFIX}*"))  # left behind by the kill
    with _run(tmp_path, "--sim-latency-ms", "5", "--sim-jitter-ms", "0",
              "--summary", str(tmp_path / "s.json")) as again:
        _, stderr = again.communicate(timeout=120)
    assert again.returncode == 0, stderr.decode()
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["items_in"] == 120 and summary["complete"] is True
    assert not list((tmp_path / "d").glob(f"{SCRATCH_PREFIX}*"))


@pytest.mark.unit
def test_fetches_on_a_disk_broker_keep_their_configured_wait_and_batches_stay_whole() -> None:
    """Each fetch costs a disk broker S3 requests and each produced batch is an object it
    lists, so run's 10 ms holds and 16-record dispatch apply to memory only."""
    from iterrefine.app._run_broker import OWN_BROKER_FETCH_MAX_WAIT_MS, for_own_broker

    base = Config()
    on_disk = for_own_broker(base, 2, on_disk=True)
    assert on_disk.runtime.fetch_max_wait_ms == base.runtime.fetch_max_wait_ms
    assert on_disk.runtime.static_partitions is not None
    assert on_disk.runtime.dispatch_batch == base.runtime.fetch_max_records
    in_memory = for_own_broker(base, 2)
    assert in_memory.runtime.fetch_max_wait_ms == OWN_BROKER_FETCH_MAX_WAIT_MS
    assert in_memory.runtime.dispatch_batch == base.runtime.dispatch_batch
