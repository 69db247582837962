"""Delivery: hand a record's messages to the producer, and finish the record once the
broker acknowledged every one of them (at-least-once).

Until then the input holds its slot in the window and blocks its partition's commit
point. Messages the broker refused are sent again with backoff until it takes them (or
the work is cancelled by a revoke or a shutdown, which leaves the input uncommitted).
Delivered inputs are counted in ``items_total`` by the outcome of their messages.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition
from prometheus_client import Counter

from iterrefine.kafka.idle import DOORBELLS
from iterrefine.observe.metrics import Metrics
from iterrefine.retry import Backoff
from iterrefine.runtime._acks import AckGroup
from iterrefine.runtime._handling import enter_unit_of_work
from iterrefine.runtime._messages import Outgoing, Sent
from iterrefine.runtime._offsets import PartitionTracker
from iterrefine.runtime._window import Window

log = structlog.get_logger("iterrefine.runtime")


class Delivery:
    """Sends one stage's messages and finishes their inputs (see the module docstring)."""

    def __init__(
        self, stage: str, *, producer: AIOKafkaProducer, consumer: AIOKafkaConsumer,
        input_topic: str, window: Window, backoff: Backoff, metrics: Metrics,
    ) -> None:
        self._stage = stage
        self._producer = producer
        self._consumer = consumer
        self._input_topic = input_topic
        self._window = window
        self._backoff = backoff
        self._metrics = metrics
        #: Output topic → whether it has the input topic's partitions (see send).
        self._same_partitions: dict[str, bool] = {}
        self._outcomes: dict[str, Counter] = {}

    async def send(self, outgoing: list[Outgoing], partition: int) -> list[asyncio.Future[Any]]:
        """Queue ``outgoing`` in the producer (normally without waiting); futures of the acks.

        An item keeps its partition number from topic to topic when the partition counts
        match (they do unless someone changed one): its key is its id, so that is where
        key hashing would put it anyway, and the pure-Python murmur2 is skipped.
        """
        futures = []
        for out in outgoing:
            same = self._same_partitions.get(out.topic)
            if same is None:
                same = await self._learn_partitioning(out.topic)
            chosen = partition if same else None
            if out.partition_by is not None:
                chosen = out.partition_by % len(await self._producer.partitions_for(out.topic))
            futures.append(await self._producer.send(
                out.topic, out.value, key=out.key, headers=out.headers, partition=chosen,
            ))
            DOORBELLS.ring(out.topic)  # a consumer of it resting in this process reads now
        return futures

    async def _learn_partitioning(self, topic: str) -> bool:
        mine = self._consumer.partitions_for_topic(self._input_topic)
        theirs = await self._producer.partitions_for(topic)
        same = bool(mine) and mine == theirs
        self._same_partitions[topic] = same
        return same

    def await_acks(self, tracker: PartitionTracker, sent: list[Sent]) -> None:
        """Finish each of ``sent`` once its acks are in; send again what failed."""
        if sent:
            AckGroup(tracker, sent, on_delivered=self.delivered,
                     on_failed=self.redeliver_later)

    def delivered(self, tracker: PartitionTracker, messages: list[Sent]) -> None:
        """Every output of these inputs is acknowledged: they may now be committed."""
        counts: dict[str, int] = {}
        for sent in messages:
            tracker.finished(sent.record.offset)
            for out in sent.outgoing:
                counts[out.outcome] = counts.get(out.outcome, 0) + 1
        for outcome, n in counts.items():  # one metric update per outcome, not per message
            self._count(outcome, n)
        self._window.release(len(messages))

    def abandoned(self, tracker: PartitionTracker) -> None:
        """A message that will not finish here: it stays uncommitted, its slot is free."""
        tracker.abandoned()
        self._window.release(1)

    def redeliver_later(
        self, record: ConsumerRecord, tracker: PartitionTracker, outgoing: list[Outgoing],
        error: BaseException,
    ) -> None:
        """Send ``record``'s messages again, in a task of its own."""
        tp = TopicPartition(record.topic, record.partition)
        self._window.spawn(tp, self.redeliver(record, tracker, outgoing, error))

    async def redeliver(
        self, record: ConsumerRecord, tracker: PartitionTracker, outgoing: list[Outgoing],
        error: BaseException,
    ) -> None:
        """The broker did not take the outputs: retry until it does (or we are cancelled)."""
        enter_unit_of_work(self._stage, record)
        attempt = 0
        try:
            while True:
                delay = self._backoff.delay_s(min(attempt, 8))
                attempt += 1
                log.warning("delivery_retry", error=type(error).__name__, attempt=attempt,
                            delay_s=round(delay, 3))
                await asyncio.sleep(delay)
                try:
                    for future in await self.send(outgoing, record.partition):
                        await future
                except KafkaError as exc:
                    error = exc
                    continue
                self.delivered(tracker, [Sent(record=record, outgoing=outgoing, acks=[])])
                return
        except asyncio.CancelledError:
            self.abandoned(tracker)
            raise

    def _count(self, outcome: str, n: int) -> None:
        counter = self._outcomes.get(outcome)
        if counter is None:
            counter = self._outcomes[outcome] = self._metrics.items_total.labels(
                self._stage, outcome
            )
        counter.inc(n)
