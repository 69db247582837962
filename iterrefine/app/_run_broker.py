"""The broker ``iterrefine run`` starts for itself: memory storage, or scratch disk when big.

Tansu 0.6.0's memory storage keeps every record until the broker stops: it accepts
``retention.ms``/``retention.bytes`` but never enforces them, and ``DeleteRecords`` is
unimplemented (docs/broker-notes.md). So a run's memory broker grows with its input
(77 MB at 20,000 small one-call items, 600 MB at 200,000). A big input therefore gets
a broker that spills to disk: Tansu on a scratch SeaweedFS store
(:mod:`iterrefine.broker._seaweed`), which stayed near 150–200 MB for Tansu and SeaweedFS
together from 20,000 to 200,000 items. That store belongs to the run alone: created fresh
under the data dir, killed and deleted when the run ends, like the memory broker's state.
Small inputs keep memory storage, which starts in milliseconds (SeaweedFS takes about
1.5 s) and is faster.

"Big" is the input's size on disk, ``[broker] disk_above_mb`` (1 MB: about 8,000
small Alpaca records or 1,000 Dolly ones); ``[broker] storage`` or
``--broker-storage`` forces either storage. SeaweedFS is the optional ``disk`` part of
iterrefine (``pip install 'iterrefine[disk]'``): without it, ``auto`` keeps memory
storage and says so in a warning, and a forced ``disk`` stops the run (exit 2).

A broker the run started is nobody else's, so the run's stages use it differently
(:func:`for_own_broker`): fixed partition shares instead of consumer groups, short
fetch holds and retry backoffs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Literal

import msgspec
import structlog
from aiokafka.structs import TopicPartition

from iterrefine.broker.embedded import EmbeddedBroker, disk_storage_available, writable_dir
from iterrefine.broker.state import find_running_broker
from iterrefine.config import BrokerConfig, Config, KafkaConfig, StaticPartitions
from iterrefine.config.extras import install_hint, missing_extra
from iterrefine.errors import ConfigError
from iterrefine.io.ingest import RawRecord
from iterrefine.io.inputs import InputSpec
from iterrefine.kafka.clients import (
    TANSU_CLUSTER_ID_PREFIX,
    cluster_id,
    make_admin,
    make_consumer,
    true_end_offsets,
)
from iterrefine.kafka.topics import TopicNames
from iterrefine.processes import pid_alive

log = structlog.get_logger()

Storage = Literal["memory", "disk"]
#: ``DATA_DIR/broker-scratch-PID``: one run's SeaweedFS store.
SCRATCH_PREFIX = "broker-scratch-"
_MB = 1024 * 1024


def input_bytes(spec: InputSpec, first: RawRecord | None) -> int | None:
    """The size of what this run will ingest, from the file system; None if unknown.

    A file's size, or a saved dataset directory's total. A trial (``--limit``,
    ``--sample``) counts as that many records of the first record's size, at most the
    whole input. A hub id with no trial is unknown.
    """
    path = Path(spec.source)
    size: int | None = None
    if path.is_file():
        size = path.stat().st_size
    elif path.is_dir():
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    taken = spec.limit if spec.limit is not None else spec.sample
    if taken is not None and first is not None:
        estimate = taken * first.length
        size = estimate if size is None else min(size, estimate)
    return size


def choose_storage(settings: BrokerConfig, size: int | None) -> Storage:
    """``disk`` if forced, or under ``auto`` for an input of at least ``disk_above_mb``
    when SeaweedFS (the ``disk`` extra) is installed."""
    if settings.storage == "disk" and not disk_storage_available():
        raise missing_extra("disk", "--broker-storage disk ([broker] storage = \"disk\")")
    if settings.storage != "auto":
        return settings.storage
    if size is None or size < settings.disk_above_mb * _MB:
        return "memory"
    if not disk_storage_available():
        log.warning("broker.disk_storage_unavailable", input_mb=_mb(size),
                    disk_above_mb=settings.disk_above_mb, storage="memory",
                    why="the broker keeps the whole input in memory while the run lasts "
                    "(about 3 KB per item)", fix=install_hint("disk"))
        return "memory"
    return "disk"


def remove_stale_scratch(data_dir: Path) -> list[Path]:
    """Delete scratch stores left by runs that died without cleaning up; return them."""
    removed: list[Path] = []
    for path in data_dir.glob(f"{SCRATCH_PREFIX}*"):
        pid = path.name.removeprefix(SCRATCH_PREFIX)
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def start_run_broker(
    data_dir: str | os.PathLike[str], settings: BrokerConfig, size: int | None,
) -> tuple[str, EmbeddedBroker]:
    """Bootstrap servers of a new embedded broker, this run's own.

    Never the ``broker up`` broker of ``data_dir`` (a line says it was not used): a run
    on a broker shares it only when pointed at it. Its storage follows
    :func:`choose_storage`. The caller owns the returned broker and must ``stop()`` it
    (which deletes a scratch store).
    """
    root = Path(data_dir)
    storage = choose_storage(settings, size)
    running = find_running_broker(root)
    if running is not None:
        # Its topics may hold another pipeline's backlog, and its groups other workers:
        # a run on it would process them too. Sharing it takes --bootstrap (README).
        log.info("broker.not_shared", running=running.bootstrap_servers,
                 fix=f"pass --bootstrap {running.bootstrap_servers} to run on that broker")
    if storage == "memory":
        # Ours alone: it must not outlive this process, even when that is SIGKILLed.
        broker = EmbeddedBroker(data_dir=root if running is None else None,
                                die_with_parent=True)
        broker.start()
        return broker.bootstrap_servers, broker
    writable_dir(root, keeps="its storage and log")
    for path in remove_stale_scratch(root):
        log.info("broker.scratch_removed", path=str(path))
    log.info("broker.storage", storage=storage, input_mb=_mb(size),
             disk_above_mb=settings.disk_above_mb, forced=settings.storage != "auto")
    broker = EmbeddedBroker(data_dir=root / f"{SCRATCH_PREFIX}{os.getpid()}", durable=True,
                            scratch=True, die_with_parent=True)
    broker.start()
    return broker.bootstrap_servers, broker


@contextlib.asynccontextmanager
async def run_broker(config: Config, input_size: int | None,
                     ) -> AsyncIterator[tuple[str, EmbeddedBroker | None]]:
    """The configured cluster, or a new embedded broker of this run's own.

    A new one keeps its records on disk for a big input (:func:`start_run_broker`).
    Also gives the broker if it is this run's own (nobody else can use it then).
    """
    if config.kafka.bootstrap_servers:
        yield config.kafka.bootstrap_servers, None
        return
    bootstrap, broker = await asyncio.to_thread(
        start_run_broker, config.data_dir, config.broker, input_size)
    try:
        yield bootstrap, broker
    finally:
        if not broker.durable:
            # Its memory storage dies with it anyway: no graceful exit to wait for
            # (Tansu took 0.3 s to honour SIGTERM after a run on a busy machine).
            broker.stop_timeout_s = 0.0
        await asyncio.to_thread(broker.stop)


#: The longest a consumer lets the run's own broker hold an empty fetch. Tansu answers
#: a fetch when its max wait ends even if records arrived meanwhile (Kafka answers at
#: once), so each hop between stages waited half of it on average: 51 ms per hop at the
#: default 100 ms, over the up to 10 hops of an item. On a broker nobody else uses, the
#: price of a short wait is a few hundred empty fetches a second over loopback.
OWN_BROKER_FETCH_MAX_WAIT_MS = 10

#: The broker retry backoff on the run's own broker: aiokafka sits one backoff out before
#: a consumer first reads its partitions' committed offsets, which held every stage's
#: first fetch back 100 ms at Kafka's default. Retries over loopback cost next to nothing.
OWN_BROKER_RETRY_BACKOFF_MS = 10


def for_own_broker(config: Config, workers: int, *, on_disk: bool = False) -> Config:
    """``config`` for a broker this run started: each stage process takes a fixed share of
    partitions (no group joins), fetches are held briefly and retries wait briefly.

    Not on disk storage: there every fetch costs the broker S3 requests (metadata and
    watermark reads, a listing of the partition when behind): a 20,000-item disk run took
    56 s with 10 ms holds and 36 s with the default (benchmarks/memory.py). On disk a
    stage also starts a fetched batch all at once (``dispatch_batch``): its outputs then
    leave in a few large produce batches, and each batch is an object Tansu lists at every
    fetch. Started 16 at a time, an 80,000-item disk run took 135 s instead of 103 s.
    """
    rt = config.runtime
    runtime = msgspec.structs.replace(
        rt, static_partitions=StaticPartitions(index=0, count=workers),
        fetch_max_wait_ms=rt.fetch_max_wait_ms if on_disk else min(
            rt.fetch_max_wait_ms, OWN_BROKER_FETCH_MAX_WAIT_MS),
        dispatch_batch=rt.fetch_max_records if on_disk else rt.dispatch_batch)
    kafka = msgspec.structs.replace(config.kafka, retry_backoff_ms=min(
        config.kafka.retry_backoff_ms, OWN_BROKER_RETRY_BACKOFF_MS))
    return msgspec.structs.replace(config, runtime=runtime, kafka=kafka)


async def for_shared_cluster(config: Config, bootstrap: str, workers: int) -> Config:
    """``config`` for a cluster given with ``--bootstrap``: consumer groups, except for
    several processes on a Tansu broker, which take static partition shares as on a broker
    of the run's own. A second ``run --workers 3`` on the same prefix of a shared Tansu
    never finished forming its groups (2 of 3 reruns gave up after 120 s, the groups
    listed empty in between; docs/broker-notes.md); one process joins them fine. Like a
    group, a share starts from the group's committed offsets; running workers of the
    prefix would take the same records (``check_pipeline_idle`` names them)."""
    if workers < 2:
        return config
    found = await cluster_id(config.kafka, bootstrap)
    if found is None or not found.startswith(TANSU_CLUSTER_ID_PREFIX):
        return config
    log.info("static_partition_shares", cluster_id=found, processes=workers,
             reason="consumer groups of a multi-process run do not re-form on Tansu")
    return msgspec.structs.replace(config, runtime=msgspec.structs.replace(
        config.runtime, static_partitions=StaticPartitions(index=0, count=workers)))


def _mb(size: int | None) -> float | None:
    return None if size is None else round(size / _MB, 2)


async def check_pipeline_idle(
    config: Config, bootstrap: str, stage_inputs: Mapping[str, str],
) -> None:
    """Refuse a shared cluster whose pipeline (this topic prefix) is busy, so that the run's
    stages take only the run's own records: records a stage group has not committed (the
    run's stages would process that backlog first).

    Members of a stage group only warn: they may be running workers (which would share
    this run's items), but Tansu and noida-db keep the members of a finished run listed
    long after it left, and refusing on them made every rerun on the same prefix (a fixed
    DLQ file, a resume) impossible there."""
    kafka = config.kafka
    names = TopicNames(kafka.topic_prefix)
    groups = {stage: f"{kafka.topic_prefix}{stage}" for stage in stage_inputs}
    members = {groups[stage]: n for stage, n in
               (await _members(kafka, bootstrap, groups)).items() if n}
    if members:
        log.warning("pipeline_groups_have_members", members=members, note=(
            "running workers of this prefix would share this run's items; members of a "
            "finished run may still be listed"))
    problems: list[str] = []
    reader = make_consumer(kafka, bootstrap, group_id=None)
    await reader.start()
    try:
        for stage, logical in stage_inputs.items():
            topic = names[logical]
            tps = [TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic)
                                                            or ())]
            if not tps:
                continue
            starts = await reader.beginning_offsets(tps)
            ends = await true_end_offsets(reader, tps)
            committed = await _committed(kafka, bootstrap, groups[stage], tps)
            behind = sum(ends[tp] - max(starts[tp], committed[tp] or 0) for tp in tps)
            if behind > 0:
                problems.append(f"{behind} records of {topic} not yet processed by group "
                                f"{groups[stage]}")
    finally:
        await reader.stop()
    if problems:
        raise ConfigError(
            f"the pipeline {kafka.topic_prefix}* on {bootstrap} is busy: "
            + "; ".join(problems) + ". A run on a shared cluster takes only its own records: "
            "pass --topic-prefix NAME. for a pipeline of its own, or let those workers finish "
            "it (iterrefine status shows where it is) and feed them with iterrefine ingest")


async def _members(kafka: KafkaConfig, bootstrap: str, groups: Mapping[str, str],
                   ) -> dict[str, int]:
    """Members per stage group now (0 for a group that does not exist)."""
    admin = make_admin(kafka, bootstrap)
    await admin.start()
    counts: dict[str, int] = {}
    try:
        # One group per request: the embedded Tansu answers a request for several with a
        # response aiokafka cannot decode.
        for group in groups.values():
            for response in await admin.describe_consumer_groups([group]):
                for described in response.groups:
                    counts[described[1]] = len(described[5]) if len(described) > 5 else 0
    finally:
        await admin.close()
    return {stage: counts.get(group, 0) for stage, group in groups.items()}


async def _committed(kafka: KafkaConfig, bootstrap: str, group: str,
                     tps: list[TopicPartition]) -> dict[TopicPartition, int | None]:
    # Never subscribes: asks the coordinator (OffsetFetch) without joining the group.
    consumer = make_consumer(kafka, bootstrap, group_id=group)
    await consumer.start()
    try:
        return {tp: await consumer.committed(tp) for tp in tps}
    finally:
        await consumer.stop()
