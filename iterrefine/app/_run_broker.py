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
``--broker-storage`` forces either storage.

A broker the run started is nobody else's, so the run's stages use it differently
(:func:`for_own_broker`): fixed partition shares instead of consumer groups, short
fetch holds and retry backoffs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import msgspec
import structlog

from iterrefine.broker.embedded import EmbeddedBroker, writable_dir
from iterrefine.broker.state import ensure_broker, find_running_broker
from iterrefine.config import BrokerConfig, Config, StaticPartitions
from iterrefine.io.ingest import RawRecord
from iterrefine.io.inputs import InputSpec
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
    """``disk`` if forced, or under ``auto`` for an input of at least ``disk_above_mb``."""
    if settings.storage != "auto":
        return settings.storage
    if size is None:
        return "memory"
    return "disk" if size >= settings.disk_above_mb * _MB else "memory"


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
) -> tuple[str, EmbeddedBroker | None]:
    """Bootstrap servers of the ``broker up`` broker in ``data_dir``, else of a new one.

    As :func:`iterrefine.broker.state.ensure_broker`, but a new broker's storage
    follows :func:`choose_storage`. The caller owns a returned broker and must
    ``stop()`` it (which deletes a scratch store).
    """
    root = Path(data_dir)
    storage = choose_storage(settings, size)
    if storage == "memory" or find_running_broker(root) is not None:
        return ensure_broker(root)
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
    """The configured cluster, a running ``broker up`` broker, or a new embedded one.

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
        if broker is not None:
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


def _mb(size: int | None) -> float | None:
    return None if size is None else round(size / _MB, 2)
