"""Commits: per owned partition, what was received and finished, and the commit of its
contiguous done prefix (on the commit interval, on revoke, at shutdown), plus the lag
gauge that the committed offsets give.

Each owned partition has a :class:`PartitionTracker` from its assignment until it is
revoked. A failed commit is not fatal: the offsets stay pending and go with the next
one; at worst a rebalance redelivers them (at-least-once; the exporter drops
duplicates).

A commit refused because the group moved on (another member left or joined: the broker
answers ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID or REBALANCE_IN_PROGRESS) is not dropped
with its partitions: its offsets are kept as *unsaved* and committed again as soon as
this member has joined the next generation (:meth:`Commits.assign`), since any member of
the current generation may commit any partition's offset. Kafka accepts a commit of the
old generation while a rebalance is only being prepared; noida-db refuses it the moment
a member leaves, so without this every member that stopped or was revoked a moment after
another left lost its last finished offsets (5-19 records redone per `run --workers 4`).
An unsaved offset is committed only where it is ahead of what the group has committed,
so it never moves a partition's new owner back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError, KafkaError
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
        #: Finished offsets whose commit the group refused (it had moved on): committed
        #: again from the next generation on.
        self.unsaved: dict[TopicPartition, int] = {}
        #: Set while nothing is unsaved.
        self.all_saved = asyncio.Event()
        self.all_saved.set()

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
        """Commit what an earlier generation refused, then track ``assigned`` from their
        committed offsets."""
        if consumer is not None and self.unsaved:
            await self.commit_unsaved(consumer)
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
    ) -> bool:
        """Commit every partition's (or ``only`` these') contiguous done prefix, if it moved;
        whether all of it is committed now."""
        if consumer is None:
            return True
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
                return True
            try:
                await consumer.commit(offsets)
            except CommitFailedError:
                # The group moved on: keep them for the next generation (module docstring).
                for tp, meta in offsets.items():
                    self.unsaved[tp] = max(meta.offset, self.unsaved.get(tp, meta.offset))
                self.all_saved.clear()
                log.warning("commit_refused_by_group", stage=self._stage,
                            partitions=sorted(tp.partition for tp in offsets),
                            action="committed again once this member rejoined")
                return False
            except KafkaError as exc:
                # Not fatal: the offsets stay pending and go with the next commit; at worst
                # a rebalance redelivers them (duplicates are removed at export).
                log.warning("commit_failed", stage=self._stage, error=type(exc).__name__)
                return False
            for tp, meta in offsets.items():
                self._trackers[tp].committed = meta.offset
                self.unsaved.pop(tp, None)
            if not self.unsaved:
                self.all_saved.set()
            return True

    async def commit_unsaved(self, consumer: AIOKafkaConsumer) -> bool:
        """Commit the offsets an earlier generation refused, where they are still ahead of
        the group's; whether none is left."""
        async with self._lock:
            pending = dict(self.unsaved)
            committed = await asyncio.gather(*(consumer.committed(tp) for tp in pending))
            ahead = {tp: OffsetAndMetadata(offset, "")
                     for (tp, offset), now in zip(pending.items(), committed, strict=True)
                     if now is None or now < offset}
            try:
                if ahead:
                    await consumer.commit(ahead)
            except KafkaError as exc:
                log.warning("unsaved_commit_failed", stage=self._stage,
                            error=type(exc).__name__)
                return False
            for tp in pending:
                self.unsaved.pop(tp, None)
            if not self.unsaved:
                self.all_saved.set()
            if ahead:
                log.info("unsaved_offsets_committed", stage=self._stage,
                         partitions=sorted(tp.partition for tp in ahead))
            return True

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
