"""Commits: per owned partition, what was received and finished, and the commit of its
contiguous done prefix (on the commit interval, on revoke, at shutdown), plus the lag
gauge that the committed offsets give.

Each owned partition has a :class:`PartitionTracker` from its assignment until it is
revoked. A failed commit is not fatal: the offsets stay pending and go with the next
one; at worst a rebalance redelivers them (at-least-once; the exporter drops
duplicates).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from iterrefine.observe.metrics import Metrics
from iterrefine.runtime._offsets import PartitionTracker

log = structlog.get_logger("iterrefine.runtime")


class Commits:
    """The trackers of one stage's partitions, and committing what they say is done."""

    def __init__(self, stage: str, *, metrics: Metrics) -> None:
        self._stage = stage
        self._metrics = metrics
        self._trackers: dict[TopicPartition, PartitionTracker] = {}
        self._lock = asyncio.Lock()
        self._lag_partitions: set[int] = set()

    @property
    def partitions(self) -> list[TopicPartition]:
        return list(self._trackers)

    def owned(self, partitions: Iterable[TopicPartition]) -> list[TopicPartition]:
        """Those of ``partitions`` this stage has a tracker for."""
        return [tp for tp in partitions if tp in self._trackers]

    def trackers(self, partitions: Iterable[TopicPartition]) -> list[PartitionTracker]:
        return [self._trackers[tp] for tp in partitions if tp in self._trackers]

    def tracker(self, tp: TopicPartition) -> PartitionTracker:
        """The tracker that records fetched from ``tp`` are counted in."""
        tracker = self._trackers.get(tp)
        if tracker is None or tracker.revoked:
            # Never skip a record of a partition we own: the position has moved past it,
            # so skipping would lose it until the next rebalance.
            tracker = self._trackers[tp] = PartitionTracker()
        return tracker

    async def assign(
        self, consumer: AIOKafkaConsumer | None, assigned: list[TopicPartition]
    ) -> None:
        """Track ``assigned`` from their committed offsets."""
        # One OffsetFetch round trip per partition: send them all at once.
        committed = await asyncio.gather(*(consumer.committed(tp) for tp in assigned)) \
            if consumer is not None else [None] * len(assigned)
        for tp, offset in zip(assigned, committed, strict=True):
            tracker = PartitionTracker()
            tracker.committed = offset
            self._trackers[tp] = tracker

    def forget(self, revoked: list[TopicPartition]) -> None:
        """Stop tracking ``revoked``: their late completions are ignored from now on."""
        for tp in revoked:
            self._trackers.pop(tp).revoked = True
            if tp.partition in self._lag_partitions:
                self._lag_partitions.discard(tp.partition)
                self._metrics.consumer_lag.remove(self._stage, str(tp.partition))

    async def commit(
        self, consumer: AIOKafkaConsumer | None, only: list[TopicPartition] | None = None
    ) -> None:
        """Commit every partition's (or ``only`` these') contiguous done prefix, if it moved."""
        if consumer is None:
            return
        async with self._lock:
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
                log.warning("commit_failed", stage=self._stage, error=type(exc).__name__)
                return
            for tp, meta in offsets.items():
                self._trackers[tp].committed = meta.offset

    def update_lag(self, consumer: AIOKafkaConsumer | None) -> None:
        """Set the lag gauge of every partition whose end and committed offset are known."""
        if consumer is None:
            return
        for tp, tracker in self._trackers.items():
            highwater = consumer.highwater(tp)
            if highwater is None or tracker.committed is None:
                continue  # no fetch answered yet: Tansu's ListOffsets would mislead
            lag = max(0, highwater - tracker.committed)
            self._metrics.consumer_lag.labels(self._stage, str(tp.partition)).set(lag)
            self._lag_partitions.add(tp.partition)

    def committed_offsets(self) -> dict[TopicPartition, int | None]:
        return {tp: t.committed for tp, t in self._trackers.items()}
