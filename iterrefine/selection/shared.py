"""The centroid model, shared by every worker through one Kafka topic.

``items.selection-model`` (one partition, compacted where the broker supports it)
holds the model's versions as msgpack :class:`CentroidModel` records, key ``model``.
Every worker reads it from the beginning and then tails it, applying one rule in log
order: **a record is accepted iff its version is higher than the accepted one**. The
log's order is the same for every reader, so every worker ends up with the same
accepted sequence and assigns the same cluster ids; a restarted worker reads the
newest model back before it assigns anything.

One worker trains at a time: the one holding partition 0 of the topic in the consumer
group ``<prefix>selection-trainer`` (Kafka's group protocol elects it; a handover
happens on rebalance, nothing else coordinates). The trainer proposes version n+1 from
the accepted version n and proposes nothing more until its proposal (or a rival's) is
read back; a proposal that loses the race is dropped and training continues from the
winner's centroids.

Two trainers overlap only around a rebalance. If compaction then keeps a losing record
(written after the winner of its version) as the last one, a worker that starts later
takes the loser's centroids for that version; it agrees again from the next version on,
which every worker accepts alike. Readers never depend on compaction having run.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import socket
from collections.abc import Coroutine
from typing import Any, Final

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from iterrefine.config import KafkaConfig, SelectionConfig
from iterrefine.kafka.clients import client_kwargs, make_consumer, true_end_offsets
from iterrefine.kafka.topics import MODEL_MAX_MESSAGE_BYTES, ensure_topics
from iterrefine.kafka.topics import MODEL_TOPIC as MODEL_TOPIC  # re-exported by the package
from iterrefine.lifecycle import AsyncService
from iterrefine.observe.metrics import Metrics
from iterrefine.selection.centroids import (
    UNPLACED,
    Assigner,
    CentroidModel,
    Placement,
    Trainer,
    decode_model,
    encode_model,
)
from iterrefine.selection.embeddings import Vector

log = structlog.get_logger("iterrefine.selection")

_KEY: Final = b"model"


async def ensure_model_topic(kafka: KafkaConfig, bootstrap: str) -> str:
    """Create the model topic (1 partition, compacted) if missing, check it if not (raises
    :class:`~iterrefine.errors.TopicSetupError`); return its full name."""
    await ensure_topics(kafka, bootstrap, [MODEL_TOPIC])
    return kafka.topic_prefix + MODEL_TOPIC


class _Joined(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, joined: asyncio.Event) -> None:
        self._joined = joined

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._joined.set()


class SharedCentroids(AsyncService):
    """This worker's view of the shared centroid model, and its trainer when elected."""

    def __init__(
        self,
        kafka: KafkaConfig,
        bootstrap: str,
        config: SelectionConfig,
        *,
        embedding_model: str,
        metrics: Metrics | None = None,
        writer: str | None = None,
        load_timeout_s: float = 30.0,
    ) -> None:
        self.kafka = kafka
        self.bootstrap = bootstrap
        self.config = config
        self.embedding_model = embedding_model
        self.writer = writer or f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self._metrics = metrics
        self._load_timeout_s = load_timeout_s
        self._trainer = Trainer(config, embedding_model=embedding_model, writer=self.writer)
        self._assigner: Assigner | None = None
        self._pending: CentroidModel | None = None
        self._proposing = False
        self._tp: TopicPartition | None = None
        self._reader: AIOKafkaConsumer | None = None
        self._lease: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Condition()

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        topic = await ensure_model_topic(self.kafka, self.bootstrap)
        self._tp = TopicPartition(topic, 0)
        self._producer = AIOKafkaProducer(
            **client_kwargs(self.kafka, self.bootstrap), acks="all", enable_idempotence=False,
            max_request_size=MODEL_MAX_MESSAGE_BYTES, compression_type=None,
        )
        await self._producer.start()
        self._reader = make_consumer(self.kafka, self.bootstrap, group_id=None,
                                     fetch_max_bytes=MODEL_MAX_MESSAGE_BYTES,
                                     max_partition_fetch_bytes=MODEL_MAX_MESSAGE_BYTES)
        await self._reader.start()
        await self._load_existing(self._reader, self._tp)
        self._tasks.append(asyncio.create_task(self._tail(self._reader), name="selection-tail"))
        self._lease = make_consumer(
            self.kafka, self.bootstrap, group_id=f"{self.kafka.topic_prefix}selection-trainer",
            session_timeout_ms=6_000, heartbeat_interval_ms=1_000,
        )
        joined = asyncio.Event()
        self._lease.subscribe([topic], listener=_Joined(joined))
        await self._lease.start()
        self._tasks.append(asyncio.create_task(self._hold_lease(self._lease),
                                               name="selection-lease"))
        # Wait for the first election, so a lone worker trains from its first item.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._load_timeout_s):
                await joined.wait()

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        for client in (self._lease, self._reader, self._producer):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()
        self._lease = self._reader = None
        self._producer = None

    # -- reading ---------------------------------------------------------------------

    @property
    def model(self) -> CentroidModel | None:
        return None if self._assigner is None else self._assigner.model

    @property
    def version(self) -> int:
        model = self.model
        return 0 if model is None else model.version

    @property
    def is_trainer(self) -> bool:
        lease = self._lease
        return lease is not None and self._tp is not None and self._tp in lease.assignment()

    async def _load_existing(self, reader: AIOKafkaConsumer, tp: TopicPartition) -> None:
        """Read the log up to its current end, so a restart resumes from the newest model."""
        end = (await true_end_offsets(reader, [tp]))[tp]
        reader.seek(tp, 0)
        async with asyncio.timeout(self._load_timeout_s):
            while await reader.position(tp) < end:
                batch = await reader.getmany(tp, timeout_ms=200)
                for record in batch.get(tp, []):
                    await self._offer(record.value)
        log.info("selection_model_loaded", version=self.version, log_end=end)

    async def _tail(self, reader: AIOKafkaConsumer) -> None:
        while True:
            try:
                batch = await reader.getmany(timeout_ms=500)
            except KafkaError as exc:  # a broker hiccup must not freeze the model here
                log.warning("selection_model_read_failed", error=repr(exc))
                await asyncio.sleep(1.0)
                continue
            for records in batch.values():
                for record in records:
                    await self._offer(record.value)

    async def _offer(self, value: bytes | None) -> None:
        """Apply the acceptance rule to one record of the log."""
        try:
            model = decode_model(value or b"")
        except (ValueError, TypeError) as exc:  # msgspec errors are ValueErrors
            log.warning("selection_model_unreadable", error=str(exc))
            return
        pending = self._pending
        if model.version > self.version:
            self._assigner = Assigner(model)
            self._trainer.accepted(model, pending)
            if self._metrics is not None:
                self._metrics.selection_model_version.set(model.version)
            log.info("selection_model_accepted", version=model.version, writer=model.writer,
                     trained_on=model.trained_on)
        if pending is not None and model.version >= pending.version:
            self._pending = None  # ours was read back, or lost to a rival of its version
            # Vectors collected while it was pending may already make the next one due.
            self._spawn(self._maybe_propose())
        async with self._changed:
            self._changed.notify_all()

    async def wait_for_version(self, version: int, timeout_s: float = 30.0) -> None:
        """Until a model of at least ``version`` is accepted (tests, benchmarks)."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: self.version >= version)

    async def _hold_lease(self, lease: AIOKafkaConsumer) -> None:
        # Polling keeps the membership alive; the data is read by the reader, so the
        # partition stays paused here.
        was_trainer = False
        while True:
            lease.pause(*lease.assignment())
            try:
                await lease.getmany(timeout_ms=500)
            except KafkaError as exc:
                log.warning("selection_lease_poll_failed", error=repr(exc))
                await asyncio.sleep(1.0)
            now = self.is_trainer
            if now != was_trainer:
                log.info("selection_trainer", elected=now, writer=self.writer)
                was_trainer = now
                if now:
                    # scikit-learn (~90 MB, ~2 s to import) only in the trainer, and not
                    # at its first fit; warm-up vectors may already make a fit due.
                    await asyncio.to_thread(importlib.import_module, "sklearn.cluster")
                    await self._maybe_propose()

    # -- assigning and training --------------------------------------------------------

    def assign(self, vector: Vector) -> tuple[int | None, int]:
        """(cluster id, model version) of ``vector``; ``(None, 0)`` before the first model."""
        placed = self.place(vector)
        return placed.cluster, placed.version

    def place(self, vector: Vector) -> Placement:
        """Where the accepted model puts ``vector`` (cluster, version, cut, high share)."""
        assigner = self._assigner
        if assigner is None:
            return UNPLACED
        cluster, cut = assigner.place(vector)
        return Placement(cluster, assigner.model.version, cut, assigner.model.high_share)

    async def observe(self, vector: Vector, key: tuple[int, float] | None = None) -> None:
        """Train on ``vector`` (with the item's rank ``key``, for the cuts) if this worker is
        the trainer; publish a due proposal.

        Before the first model every worker keeps its warm-up vectors (at most
        ``warmup``), so whichever is elected can fit at once.
        """
        if not self.is_trainer:
            if self.model is None and self._trainer.buffered < self.config.warmup:
                self._trainer.collect(vector, key)
            return
        self._trainer.collect(vector, key)
        await self._maybe_propose()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work, name="selection-propose")
        self._tasks.append(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("selection_propose_failed", error=repr(task.exception()))

    async def _maybe_propose(self) -> None:
        if self._pending is not None or self._proposing or not self.is_trainer:
            return
        accepted = self.model
        if not self._trainer.due(accepted):
            return
        self._proposing = True
        try:
            # A warm-up fit takes ~a second: off the event loop, which serves items.
            proposal = await asyncio.to_thread(self._trainer.fit,
                                             self._trainer.take(accepted), accepted)
            self._pending = proposal
            assert self._producer is not None and self._tp is not None
            await self._producer.send_and_wait(self._tp.topic, encode_model(proposal),
                                               key=_KEY, partition=0)
            log.info("selection_model_proposed", version=proposal.version,
                     trained_on=proposal.trained_on)
        except Exception as exc:
            # Training is best effort: the item that triggered it is fine, and the next
            # batch proposes again. (Its vectors are dropped: a sample, like the rest.)
            self._pending = None
            log.warning("selection_propose_failed", error=repr(exc))
        except BaseException:
            self._pending = None
            raise
        finally:
            self._proposing = False
