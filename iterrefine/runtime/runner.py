"""The stage runner: consume → handle concurrently → produce → commit the done prefix.

One runner drives one stage in one process. Many messages of one partition are
handled at once (LLM calls are slow), bounded by ``max_in_flight``; an input counts
as done only after every output it produced was acknowledged by the broker
(at-least-once), and per partition only the contiguous prefix of done offsets is
committed (:mod:`iterrefine.runtime.offsets`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from iterrefine.config import Config
from iterrefine.errors import ValidationError
from iterrefine.kafka import make_consumer, make_producer
from iterrefine.metrics import Metrics
from iterrefine.model import Item, encode_item
from iterrefine.retry import Backoff, retry_async
from iterrefine.runtime.dlq import dlq_headers, dlq_key, dlq_reason
from iterrefine.runtime.offsets import PartitionTracker
from iterrefine.runtime.stage import Limits, Output, Stage
from iterrefine.topics import TopicNames

log = structlog.get_logger("iterrefine.runtime")

#: One message to produce: (full topic, key, value, headers, outcome label).
_Outgoing = tuple[str, bytes, bytes, list[tuple[str, bytes]] | None, str]


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, runner: StageRunner) -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._runner._on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._runner._on_assigned(list(assigned))


class StageRunner:
    """Runs one :class:`Stage` against a Kafka cluster until ``stop`` is set."""

    def __init__(
        self,
        stage: Stage,
        *,
        config: Config,
        bootstrap_servers: str,
        metrics: Metrics | None = None,
        producer: AIOKafkaProducer | None = None,
        group_id: str | None = None,
    ) -> None:
        self.stage = stage
        self._config = config
        self._rt = config.runtime
        self._bootstrap = bootstrap_servers
        self._topics = TopicNames(config.kafka.topic_prefix)
        self._input_topic = self._topics[stage.input_topic]
        self._dlq_topic = self._topics["items.dlq"]
        self.group_id = group_id or f"{config.kafka.topic_prefix}{stage.name}"
        self._metrics = metrics or Metrics()
        self._limits = Limits(self._rt.max_item_bytes, self._rt.max_envelope_bytes)
        self._backoff = Backoff(base_s=self._rt.retry_base_s, max_s=self._rt.retry_max_s)
        self._own_producer = producer is None
        self._producer = producer
        self._consumer: AIOKafkaConsumer | None = None
        self._trackers: dict[TopicPartition, PartitionTracker] = {}
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        self._inflight = 0
        self._slot_freed = asyncio.Event()
        self._paused = False
        self._commit_lock = asyncio.Lock()
        self._abandon = False  # set when the drain deadline passed: give up on deliveries
        #: Set once the consumer got its first assignment (readiness).
        self.ready = asyncio.Event()
        self.handled = 0
        self.dead_lettered = 0
        self._m_inflight = self._metrics.inflight.labels(stage.name)
        self._m_seconds = self._metrics.stage_seconds.labels(stage.name)
        self._m_outcomes: dict[str, Any] = {}
        self._lag_partitions: set[int] = set()

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Process until ``stop`` is set, then drain, commit and leave the group."""
        if self._producer is None:
            self._producer = make_producer(
                self._config.kafka, self._bootstrap, linger_ms=self._rt.linger_ms
            )
            await self._producer.start()
        consumer = make_consumer(
            self._config.kafka,
            self._bootstrap,
            group_id=self.group_id,
            group_instance_id=self._config.kafka.group_instance_id,
            max_poll_interval_ms=self._rt.max_poll_interval_ms,
            session_timeout_ms=self._rt.session_timeout_ms,
            heartbeat_interval_ms=self._rt.heartbeat_interval_ms,
            max_poll_records=self._rt.fetch_max_records,
        )
        consumer.subscribe([self._input_topic], listener=_Rebalance(self))
        self._consumer = consumer
        await consumer.start()
        log.info("stage_started", stage=self.stage.name, topic=self._input_topic,
                 group=self.group_id)
        try:
            next_commit = time.monotonic() + self._rt.commit_interval_ms / 1000
            while not stop.is_set():
                await self._poll_once(consumer)
                if time.monotonic() >= next_commit:
                    await self._commit()
                    self._update_lag()
                    next_commit = time.monotonic() + self._rt.commit_interval_ms / 1000
        finally:
            await self._shutdown(consumer)

    async def _shutdown(self, consumer: AIOKafkaConsumer) -> None:
        pending = [t for tasks in self._tasks.values() for t in tasks]
        if pending:
            log.info("stage_draining", stage=self.stage.name, inflight=len(pending),
                     deadline_s=self._rt.drain_timeout_s)
            _, late = await asyncio.wait(pending, timeout=self._rt.drain_timeout_s)
            await self._cancel(late)
        await self._commit()
        await consumer.stop()
        if self._own_producer and self._producer is not None:
            await self._producer.stop()
        log.info("stage_stopped", stage=self.stage.name, handled=self.handled,
                 dead_lettered=self.dead_lettered)

    async def _cancel(self, tasks: set[asyncio.Task[None]]) -> None:
        if not tasks:
            return
        self._abandon = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._abandon = False

    # ------------------------------------------------------------------ fetching

    async def _poll_once(self, consumer: AIOKafkaConsumer) -> None:
        free = self._rt.max_in_flight - self._inflight
        if free <= 0:
            # Window full: stop fetching but keep calling getmany, or aiokafka would
            # leave the group after max_poll_interval_ms.
            if not self._paused:
                consumer.pause(*consumer.assignment())
                self._paused = True
            self._slot_freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._slot_freed.wait(), timeout=self._rt.fetch_timeout_ms / 1000
                )
            await consumer.getmany(timeout_ms=0)
            return
        if self._paused:
            consumer.resume(*consumer.assignment())
            self._paused = False
        batch = await consumer.getmany(
            timeout_ms=self._rt.fetch_timeout_ms,
            max_records=min(free, self._rt.fetch_max_records),
        )
        assignment = consumer.assignment()
        for tp, records in batch.items():
            if tp not in assignment:
                continue  # taken away meanwhile: its new owner reads from the committed offset
            tracker = self._trackers.get(tp)
            if tracker is None or tracker.revoked:
                # Never skip a record of a partition we own: the position has moved past it,
                # so skipping would lose it until the next rebalance.
                tracker = self._trackers[tp] = PartitionTracker()
            tasks = self._tasks.setdefault(tp, set())
            for record in records:
                tracker.received(record.offset)
                self._inflight += 1
                task = asyncio.create_task(self._process(record, tracker))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(self._release_slot)
        self._m_inflight.set(self._inflight)

    def _release_slot(self, _task: asyncio.Task[None]) -> None:
        self._inflight -= 1
        self._slot_freed.set()

    # ------------------------------------------------------------------ processing

    async def _process(self, record: ConsumerRecord, tracker: PartitionTracker) -> None:
        # Every event of this unit of work, dead letters and delivery retries included,
        # says where its message came from; _handle adds the item id and round.
        with structlog.contextvars.bound_contextvars(
            stage=self.stage.name, topic=record.topic, partition=record.partition,
            offset=record.offset,
        ):
            try:
                outgoing = await self._handle(record)
                await self._deliver(outgoing)
            except asyncio.CancelledError:
                tracker.abandoned()  # stays uncommitted: the next owner processes it again
                raise
        tracker.finished(record.offset)
        for *_, outcome in outgoing:
            self._count(outcome)

    async def _handle(self, record: ConsumerRecord) -> list[_Outgoing]:
        """Decode and run the handler; any failure becomes a dead letter (the policy)."""
        try:
            item = self.stage.decode(record, self._limits)
        except ValidationError as exc:
            # No item, but the DLQ row's id: the producer's key, else a hash of the bytes.
            with structlog.contextvars.bound_contextvars(
                item_id=dlq_key(record).decode("utf-8", "replace")
            ):
                return [self._dead_letter(record, exc, attempts=1)]
        attempts = 0

        async def attempt() -> Sequence[Output]:
            nonlocal attempts
            attempts += 1
            return await self.stage.handler(item)

        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(item_id=item.id, round=item.round):
            try:
                outputs = await retry_async(
                    attempt,
                    attempts=self._rt.retry_max_attempts,
                    backoff=self._backoff,
                    on_retry=self._log_retry,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # handed to the dead-letter policy, never swallowed
                log.warning("handler_failed", error=type(exc).__name__, reason=dlq_reason(exc),
                            message=str(exc)[:300], attempts=attempts)
                return [self._dead_letter(record, exc, attempts=attempts, item=item)]
        elapsed = time.perf_counter() - started
        self._m_seconds.observe(elapsed)
        self.handled += 1
        return [
            (
                self._topics[out.topic],
                out.item.id.encode(),
                encode_item(out.item.add_timing(self.stage.name, elapsed)),
                None,
                out.outcome_label,
            )
            for out in outputs
        ]

    @staticmethod
    def _log_retry(attempt: int, exc: BaseException, delay_s: float) -> None:
        log.info("handler_retry", attempt=attempt, error=type(exc).__name__,
                 delay_s=round(delay_s, 3))

    def _dead_letter(
        self, record: ConsumerRecord, exc: BaseException, *, attempts: int,
        item: Item | None = None,
    ) -> _Outgoing:
        reason = dlq_reason(exc)
        self.dead_lettered += 1
        self._metrics.dlq_total.labels(self.stage.name, reason).inc()
        # item_id, stage, topic, partition and offset come bound from _process/_handle.
        log.warning("dead_lettered", reason=reason, message=str(exc)[:300])
        headers = dlq_headers(record, stage=self.stage.name, exc=exc, attempts=attempts,
                              item=item)
        key = item.id.encode() if item is not None else dlq_key(record)
        return (self._dlq_topic, key, record.value or b"", headers, "dlq")

    async def _deliver(self, outgoing: list[_Outgoing]) -> None:
        """Produce and wait for the broker's acks; retry until delivered or abandoned."""
        assert self._producer is not None
        attempt = 0
        while True:
            try:
                futures = [
                    await self._producer.send(topic, value, key=key, headers=headers)
                    for topic, key, value, headers, _ in outgoing
                ]
                await asyncio.gather(*futures)
                return
            except KafkaError as exc:
                if self._abandon:
                    raise
                delay = self._backoff.delay_s(min(attempt, 8))
                attempt += 1
                log.warning("delivery_retry", error=type(exc).__name__, attempt=attempt,
                            delay_s=round(delay, 3))
                await asyncio.sleep(delay)

    def _count(self, outcome: str) -> None:
        counter = self._m_outcomes.get(outcome)
        if counter is None:
            counter = self._m_outcomes[outcome] = self._metrics.items_total.labels(
                self.stage.name, outcome
            )
        counter.inc()

    # ------------------------------------------------------------------ commits

    async def _commit(self, only: list[TopicPartition] | None = None) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        async with self._commit_lock:
            offsets: dict[TopicPartition, OffsetAndMetadata] = {}
            for tp, tracker in self._trackers.items():
                if only is not None and tp not in only:
                    continue
                point = tracker.commit_point()
                if point is not None:
                    tracker.to_commit = point
                if tracker.to_commit is not None and tracker.to_commit != tracker.committed:
                    offsets[tp] = OffsetAndMetadata(tracker.to_commit, "")
            if not offsets:
                return
            try:
                await consumer.commit(offsets)
            except KafkaError as exc:
                # Not fatal: the offsets stay pending and go with the next commit; at worst
                # a rebalance redelivers them (duplicates are removed at export).
                log.warning("commit_failed", stage=self.stage.name, error=type(exc).__name__)
                return
            for tp, meta in offsets.items():
                self._trackers[tp].committed = meta.offset

    def _update_lag(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        for tp, tracker in self._trackers.items():
            highwater = consumer.highwater(tp)
            if highwater is None or tracker.committed is None:
                continue  # no fetch answered yet: Tansu's ListOffsets would mislead
            lag = max(0, highwater - tracker.committed)
            self._metrics.consumer_lag.labels(self.stage.name, str(tp.partition)).set(lag)
            self._lag_partitions.add(tp.partition)

    # ------------------------------------------------------------------ rebalance

    async def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        consumer = self._consumer
        for tp in assigned:
            tracker = PartitionTracker()
            if consumer is not None:
                committed = await consumer.committed(tp)
                tracker.committed = committed
            self._trackers[tp] = tracker
        log.info("partitions_assigned", stage=self.stage.name,
                 partitions=sorted(tp.partition for tp in assigned))
        self.ready.set()

    async def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        """Stop dispatching for ``revoked``, let their work finish up to a deadline, commit."""
        mine = [tp for tp in revoked if tp in self._trackers]
        tasks = {t for tp in mine for t in self._tasks.get(tp, ())}
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self._rt.revoke_drain_timeout_s)
            await self._cancel(late)
        await self._commit(only=mine)
        for tp in mine:
            self._trackers.pop(tp).revoked = True
            self._tasks.pop(tp, None)
            if tp.partition in self._lag_partitions:
                self._lag_partitions.discard(tp.partition)
                self._metrics.consumer_lag.remove(self.stage.name, str(tp.partition))
        if mine:
            log.info("partitions_revoked", stage=self.stage.name,
                     partitions=sorted(tp.partition for tp in mine))

    # ------------------------------------------------------------------ introspection

    @property
    def inflight(self) -> int:
        return self._inflight

    def committed_offsets(self) -> dict[TopicPartition, int | None]:
        return {tp: t.committed for tp, t in self._trackers.items()}
