"""The exact selection of a finite input: a barrier at route, one decision for the run.

Three parts, one per kind of process of ``iterrefine run`` (``--workers N`` included):

* the score stage sends each stage-1 survivor's signals — judge level, difficulty and
  embedding vector — to ``items.selection-signals`` (:class:`SignalSink`);
* the run process (:class:`ExactSelection`) keeps the vectors on disk
  (:class:`~iterrefine.selection._vector_file.VectorFile`) and, once every ingested item
  is either signalled or already terminal (:meth:`ExactSelection.reached`), runs the
  paper's procedure once — k-means over all survivors, then the per-cluster quota
  (:mod:`iterrefine.selection.exact`) — and publishes every item's decision;
* every route worker (:class:`DecisionTable`) holds its stage until it has read all the
  decisions of the run, then routes each item by its own.

Memory per 100,000 survivors: the decider holds the ids, levels and difficulties, and
k-means' O(n) labels and distances besides the centroids (k × dim); the vectors stay in
the file (100k × 4,096 × 4 B = 1.6 GB on disk for an 8B model, 100 MB for a 256-d one),
read through a memory map (measured: benchmarks/README.md, ``--memory-100k``). Each
route worker holds the decisions: ~30 MB (64-character ids).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from iterrefine.config import KafkaConfig, SelectionConfig
from iterrefine.errors import ConfigError, IterrefineError
from iterrefine.kafka.clients import client_kwargs, make_consumer
from iterrefine.lifecycle import AsyncService
from iterrefine.selection import _records as records
from iterrefine.selection._vector_file import VectorFile
from iterrefine.selection.embeddings import Vector
from iterrefine.selection.exact import effective_k, exact_clusters, exact_decisions

log = structlog.get_logger("iterrefine.selection")


def exact_run_id(config: SelectionConfig) -> str:
    """The run id exact mode needs; ConfigError when ``exact`` was asked outside ``run``."""
    if not config.exact_run_id:
        raise ConfigError(
            'selection.mode = "exact" needs the whole input before routing, which only '
            '`iterrefine run` has: use `iterrefine run`, or mode = "online" (or "auto") for '
            "long-running workers")
    return config.exact_run_id


def is_exact(config: SelectionConfig) -> bool:
    """Whether this process takes part in an exact selection (``run`` resolved the mode)."""
    if config.mode == "exact":
        exact_run_id(config)
        return True
    return config.mode == "auto" and bool(config.exact_run_id)


def _producer(kafka: KafkaConfig, bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **client_kwargs(kafka, bootstrap), acks="all", enable_idempotence=False,
        max_request_size=records.MAX_SIGNAL_BYTES, linger_ms=5)


def _reader(kafka: KafkaConfig, bootstrap: str) -> AIOKafkaConsumer:
    return make_consumer(kafka, bootstrap, group_id=None,
                         fetch_max_bytes=4 * records.MAX_SIGNAL_BYTES,
                         max_partition_fetch_bytes=4 * records.MAX_SIGNAL_BYTES)


async def _tail(reader: AIOKafkaConsumer, offer: Callable[[bytes | None], None]) -> None:
    """Hand every record of the reader's partition to ``offer``, forever."""
    while True:
        try:
            batch = await reader.getmany(timeout_ms=200)
        except KafkaError as exc:  # a broker hiccup must not end the barrier
            log.warning("selection_read_failed", error=repr(exc))
            await asyncio.sleep(1.0)
            continue
        for found in batch.values():
            for record in found:
                offer(record.value)


class SignalSink(AsyncService):
    """The score stage's side: each survivor's signals, durable before the item moves on."""

    def __init__(self, kafka: KafkaConfig, bootstrap: str, run_id: str) -> None:
        self.kafka, self.bootstrap, self.run_id = kafka, bootstrap, run_id
        self._producer: AIOKafkaProducer | None = None
        self._topic = ""

    async def start(self) -> None:
        self._topic = await records.ensure_topic(self.kafka, self.bootstrap,
                                                 records.SIGNALS_TOPIC)
        self._producer = _producer(self.kafka, self.bootstrap)
        await self._producer.start()

    async def aclose(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
            self._producer = None

    async def send(self, item_id: str, level: int, difficulty: float, vector: Vector) -> None:
        assert self._producer is not None, "SignalSink used before start()"
        data = np.ascontiguousarray(vector, dtype="<f4")
        signal = records.Signal(run=self.run_id, id=item_id, level=level,
                                difficulty=difficulty, vector=data.tobytes(), dim=data.size)
        await self._producer.send_and_wait(self._topic, records.encode(signal),
                                           key=item_id.encode(), partition=0)


class ExactSelection(AsyncService):
    """The run process's side: collects the signals, decides once, publishes the decisions."""

    def __init__(self, kafka: KafkaConfig, bootstrap: str, config: SelectionConfig, *,
                 data_dir: Path) -> None:
        self.kafka, self.bootstrap, self.config = kafka, bootstrap, config
        self.run_id = exact_run_id(config)
        self._data_dir = data_dir
        self._vectors: VectorFile | None = None
        self._reader: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sklearn: asyncio.Task[object] | None = None
        self._decisions_topic = ""
        #: What the decision did, for the run summary (empty until decided).
        self.report: dict[str, Any] = {}
        self.problem: str | None = None

    async def start(self) -> None:
        signals = await records.ensure_topic(self.kafka, self.bootstrap,
                                             records.SIGNALS_TOPIC)
        self._decisions_topic = await records.ensure_topic(
            self.kafka, self.bootstrap, records.DECISIONS_TOPIC)
        self._vectors = VectorFile(self._data_dir)
        self._producer = _producer(self.kafka, self.bootstrap)
        await self._producer.start()
        self._reader = _reader(self.kafka, self.bootstrap)
        await self._reader.start()
        tp = TopicPartition(signals, 0)
        self._reader.assign([tp])
        await self._reader.seek_to_beginning(tp)
        self._tasks.append(asyncio.create_task(_tail(self._reader, self._offer),
                                               name="selection-signals"))
        # scikit-learn takes seconds to import: while the items are scored, not after.
        self._sklearn = asyncio.create_task(
            asyncio.to_thread(importlib.import_module, "sklearn.cluster"))

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._sklearn is not None:
            with contextlib.suppress(BaseException):
                await self._sklearn
        for client in (self._reader, self._producer):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()
        if self._vectors is not None:
            self._vectors.close()

    @property
    def signalled(self) -> int:
        return 0 if self._vectors is None else len(self._vectors)

    def _offer(self, value: bytes | None) -> None:
        found = records.decode(value)
        if not isinstance(found, records.Signal) or found.run != self.run_id:
            return
        assert self._vectors is not None
        try:
            self._vectors.put(found.id, found.level, found.difficulty, found.vector, found.dim)
        except IterrefineError as exc:
            self.problem = self.problem or str(exc)

    def reached(self, pending: Callable[[str], bool], pending_count: int) -> bool:
        """Whether every item still on its way (``pending``) has sent its signals.

        Call once ingest has ended. Before route is released no item can reach a
        terminal topic except from scoring (rejected, dead-lettered): so the barrier is
        reached when the signalled items still pending are all the pending items.
        """
        if self.problem is not None:
            raise IterrefineError(f"exact selection: {self.problem}", reason="selection")
        if self._vectors is None or len(self._vectors) < pending_count:
            return False
        covered = sum(1 for item_id in self._vectors.rows if pending(item_id))
        return covered >= pending_count

    async def decide(self, pending: Callable[[str], bool]) -> dict[str, Any]:
        """Cluster every pending survivor, rank each cluster, publish; the report."""
        assert self._vectors is not None and self._producer is not None
        started = time.perf_counter()
        vectors = self._vectors
        # In item-id order: the result must not depend on which worker scored what first
        # (k-means++ seeding follows the row order).
        chosen = sorted((item_id, row) for item_id, row in vectors.rows.items()
                        if pending(item_id))
        rows = [row for _, row in chosen]
        k = effective_k(len(rows), self.config.k, self.config.min_cluster_items)
        note = "" if k in (self.config.k, 0) else (
            f"{len(rows)} survivors are few for k = {self.config.k} clusters of at least "
            f"{self.config.min_cluster_items} items (selection.min_cluster_items): k = {k}")
        decisions = []
        if self._sklearn is not None:
            await self._sklearn
        if rows:
            matrix = vectors.matrix(rows)
            labels = await asyncio.to_thread(exact_clusters, matrix, k,
                                             self.config.random_state, in_place=True)
            del matrix
            decisions = exact_decisions(
                labels.tolist(), [vectors.levels[r] for r in rows],
                [vectors.difficulties[r] for r in rows], self.config.k_ratio)
        clustered = time.perf_counter()
        for (item_id, _), decision in zip(chosen, decisions, strict=True):
            record = records.Decision(run=self.run_id, id=item_id, cluster=decision.cluster,
                                      position=decision.position, size=decision.size,
                                      highs=decision.highs, k=k)
            await self._producer.send(self._decisions_topic, records.encode(record), partition=0)
        end = records.End(run=self.run_id, decisions=len(decisions), k=k,
                          k_configured=self.config.k, note=note)
        await self._producer.send_and_wait(self._decisions_topic, records.encode(end),
                                           partition=0)
        self.report = {
            "mode": "exact", "clustered": len(decisions), "k": k,
            "k_configured": self.config.k, "high": sum(d.high for d in decisions),
            "note": note, "cluster_s": round(clustered - started, 3),
            "decide_s": round(time.perf_counter() - started, 3),
            "vector_dim": vectors.dim,
        }
        if note:
            log.warning("selection_small_input", survivors=len(rows), k=k,
                        k_configured=self.config.k, note=note)
        log.info("selection_exact_decided", **self.report)
        return self.report


class DecisionTable(AsyncService):
    """A route worker's copy of the run's decisions; complete once the End record is read."""

    def __init__(self, kafka: KafkaConfig, bootstrap: str, run_id: str) -> None:
        self.kafka, self.bootstrap, self.run_id = kafka, bootstrap, run_id
        self._decisions: dict[str, records.Decision] = {}
        self._reader: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.end: records.End | None = None

    async def start(self) -> None:
        topic = await records.ensure_topic(self.kafka, self.bootstrap,
                                           records.DECISIONS_TOPIC)
        self._reader = _reader(self.kafka, self.bootstrap)
        await self._reader.start()
        tp = TopicPartition(topic, 0)
        self._reader.assign([tp])
        await self._reader.seek_to_beginning(tp)
        self._task = asyncio.create_task(_tail(self._reader, self._offer),
                                         name="selection-decisions")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader.stop()

    @property
    def complete(self) -> bool:
        """Every decision of the run is here: route may start."""
        return self.end is not None

    def _offer(self, value: bytes | None) -> None:
        found = records.decode(value)
        if found is None or found.run != self.run_id or self.end is not None:
            return
        if isinstance(found, records.Decision):
            self._decisions[found.id] = found
        elif isinstance(found, records.End):
            self.end = found
            log.info("selection_decisions_read", decisions=len(self._decisions), k=found.k)
            # Stop reading: nothing of this run follows its End record.
            if self._task is not None:
                self._task.cancel()

    def get(self, item_id: str) -> records.Decision | None:
        return self._decisions.get(item_id)
