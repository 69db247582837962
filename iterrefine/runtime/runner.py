"""The stage runner: consume → handle concurrently → produce → commit the done prefix.

One runner drives one stage in one process. Many messages of one partition are
handled at once (LLM calls are slow), bounded by ``max_in_flight``; an input counts
as done only after every output it produced was acknowledged by the broker
(at-least-once), and per partition only the contiguous prefix of done offsets is
committed (:mod:`iterrefine.runtime._offsets`).

:class:`StageRunner` owns the lifecycle (clients, the poll loop, rebalances, the drain
on stop) and composes the mechanisms, one private module each:

- ``_fetch``: the poll, backpressure on a full window, dispatch of fetched records;
- ``_window``: the in-flight window and the tasks working in it;
- ``_processing``: a task per message, or per fetched batch for inline handlers;
- ``_handling``: decode, call the handler, check and encode its outputs;
- ``_failures``: retry with backoff, or give up and dead-letter;
- ``_delivery``: produce, finish inputs on their acks, redeliver refused messages;
- ``_commits``: per-partition trackers and the contiguous-prefix commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.structs import TopicPartition

from iterrefine.config import Config
from iterrefine.errors import BrokerError
from iterrefine.kafka.clients import make_consumer, make_producer
from iterrefine.kafka.topics import TopicNames
from iterrefine.observe.metrics import Metrics
from iterrefine.retry import Backoff
from iterrefine.runtime._commits import Commits
from iterrefine.runtime._delivery import Delivery
from iterrefine.runtime._failures import DeadLetters
from iterrefine.runtime._fetch import Fetcher
from iterrefine.runtime._handling import Handling
from iterrefine.runtime._processing import Processing
from iterrefine.runtime._restore import replay_history
from iterrefine.runtime._window import Window
from iterrefine.runtime.stage import Limits, Stage

log = structlog.get_logger("iterrefine.runtime")


async def _unless_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run ``work`` unless ``stop`` is set first (then cancel it): whether it finished."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if task.done():
        task.result()  # re-raise its error
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


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
        self._rt = rt = config.runtime
        self._bootstrap = bootstrap_servers
        topics = TopicNames(config.kafka.topic_prefix)
        self._input_topic = topics[stage.input_topic]
        self.group_id = group_id or f"{config.kafka.topic_prefix}{stage.name}"
        self._metrics = metrics = metrics or Metrics()
        self._backoff = Backoff(base_s=rt.retry_base_s, max_s=rt.retry_max_s)
        self._own_producer = producer is None
        self._producer = producer
        self._consumer: AIOKafkaConsumer | None = None
        self._seconds = metrics.stage_seconds.labels(stage.name)
        self._window = Window(rt.max_in_flight, gauge=metrics.inflight.labels(stage.name))
        self._commits = Commits(stage.name, metrics=metrics)
        self._dead_letters = DeadLetters(stage.name, topic=topics["items.dlq"], metrics=metrics)
        self._limits = Limits(rt.max_item_bytes, rt.max_envelope_bytes)
        self._handling = Handling(
            stage, topics=topics, limits=self._limits,
            backoff=self._backoff, retry_max_attempts=rt.retry_max_attempts,
            dead_letters=self._dead_letters, seconds=self._seconds,
        )
        #: Set once the consumer got its first assignment (readiness).
        self.ready = asyncio.Event()
        #: Set once, after a stop, the in-flight work is drained and its offsets committed.
        self.drained = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event, leave: asyncio.Event | None = None) -> None:
        """Process until ``stop`` is set, then drain, commit and leave the group.

        ``leave``: stay in the group after the commit until it is set (:attr:`drained` says
        when the commit is done). Processes that stop together commit first and leave
        after, so no member leaves while another still commits: a broker that starts a new
        generation the moment a member leaves (noida-db) refuses the commits of the old one.
        """
        if self._producer is None:
            self._producer = make_producer(
                self._config.kafka, self._bootstrap, linger_ms=self._rt.linger_ms
            )
            await self._producer.start()
        producer = self._producer
        consumer = self._make_consumer()
        static = self._rt.static_partitions
        if static is None:
            consumer.subscribe([self._input_topic], listener=_Rebalance(self))
        self._consumer = consumer
        if not await _unless_stopped(consumer.start(), stop):
            # A group that never lets us join (Tansu can keep members of an earlier run)
            # must not make SIGTERM hang: give up the join and leave.
            await consumer.stop()
            if self._own_producer:
                await producer.stop()
            log.warning("stage_stopped_before_joining", stage=self.stage.name,
                        group=self.group_id)
            self.drained.set()
            return
        if static is not None:
            # No group join (seconds on the embedded broker): take our share directly.
            # The committed offsets still decide where each partition starts.
            mine = [TopicPartition(self._input_topic, p)
                    for p in await self._partitions(consumer) if p % static.count == static.index]
            consumer.assign(mine)
            await self._on_assigned(mine)
        log.info("stage_started", stage=self.stage.name, topic=self._input_topic,
                 group=self.group_id)
        fetcher = self._fetcher(producer, consumer)
        try:
            next_commit = time.monotonic() + self._rt.commit_interval_ms / 1000
            while not stop.is_set():
                # Raced with stop: a poll waits up to fetch_timeout_ms for records, and a
                # stop should not wait for it. A cancelled poll took no records (aiokafka
                # hands them over only when getmany returns).
                if not await _unless_stopped(fetcher.poll_once(), stop):
                    break
                if time.monotonic() >= next_commit:
                    await self._commits.commit(consumer)
                    self._commits.update_lag(consumer)
                    next_commit = time.monotonic() + self._rt.commit_interval_ms / 1000
        finally:
            await self._shutdown(consumer, leave)

    def _make_consumer(self) -> AIOKafkaConsumer:
        return make_consumer(
            self._config.kafka,
            self._bootstrap,
            group_id=self.group_id,
            group_instance_id=self._config.kafka.group_instance_id,
            max_poll_interval_ms=self._rt.max_poll_interval_ms,
            session_timeout_ms=self._rt.session_timeout_ms,
            heartbeat_interval_ms=self._rt.heartbeat_interval_ms,
            max_poll_records=self._rt.fetch_max_records,
            fetch_max_wait_ms=self._rt.fetch_max_wait_ms,
        )

    def _fetcher(self, producer: AIOKafkaProducer, consumer: AIOKafkaConsumer) -> Fetcher:
        """The fetch → process → deliver chain over the started clients."""
        delivery = Delivery(
            self.stage.name, producer=producer, consumer=consumer,
            input_topic=self._input_topic, window=self._window, backoff=self._backoff,
            metrics=self._metrics,
        )
        processing = Processing(self.stage.name, handling=self._handling, delivery=delivery,
                                window=self._window, seconds=self._seconds)
        return Fetcher(self.stage, consumer=consumer, runtime=self._rt, window=self._window,
                       commits=self._commits, processing=processing,
                       topics=(self._input_topic,))

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[int]:
        """The input topic's partition numbers (asking the broker if not yet known)."""
        found = consumer.partitions_for_topic(self._input_topic)
        if not found:
            await consumer.topics()  # a metadata request for every topic
            found = consumer.partitions_for_topic(self._input_topic)
        if not found:
            raise BrokerError(f"topic {self._input_topic} does not exist on the broker")
        return sorted(found)

    async def _shutdown(self, consumer: AIOKafkaConsumer, leave: asyncio.Event | None) -> None:
        inflight = self._window.inflight
        if inflight:
            log.info("stage_draining", stage=self.stage.name, inflight=inflight,
                     deadline_s=self._rt.drain_timeout_s)
            await self._drain(self._commits.partitions, self._rt.drain_timeout_s)
        self._window.report()  # the last poll was cut short by the stop
        committed = await self._commits.commit(self._consumer)
        if (not committed or self._commits.unsaved) and self._rt.static_partitions is None:
            await self._commit_after_rejoin()
        self.drained.set()
        if leave is not None:
            await leave.wait()
        await consumer.stop()
        if self._own_producer and self._producer is not None:
            await self._producer.stop()
        log.info("stage_stopped", stage=self.stage.name, handled=self.handled,
                 dead_lettered=self.dead_lettered)

    async def commit_finished(self) -> bool:
        """Commit what is finished now, without stopping: a process that stops after others
        commits first, while the group is still the one it joined."""
        return await self._commits.commit(self._consumer)

    async def _commit_after_rejoin(self) -> None:
        """The group refused our last commit (another member left meanwhile): stay until
        this member has joined the next generation, which commits what was refused
        (:meth:`Commits.assign`), then leave. Bounded: at worst the next owner redoes it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(10.0, 2 * self._rt.session_timeout_ms / 1000)
        log.info("stage_rejoining_to_commit", stage=self.stage.name,
                 partitions=sorted(tp.partition for tp in self._commits.unsaved))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self._commits.all_saved.wait()
        if self._commits.unsaved:
            log.warning("stage_stopped_with_unsaved_offsets", stage=self.stage.name,
                        partitions=sorted(tp.partition for tp in self._commits.unsaved),
                        effect="their next owner processes those records again")

    async def _drain(self, partitions: list[TopicPartition], timeout_s: float) -> None:
        """Let ``partitions``' work finish (handlers, then broker acks) up to a deadline.

        What is still running then is cancelled: it stays uncommitted, so whoever owns
        the partition next processes it again.
        """
        deadline = time.monotonic() + timeout_s
        await self._window.finish_tasks(partitions, timeout_s)
        await self._window.wait_for_acks(self._commits.trackers(partitions), deadline)

    # ------------------------------------------------------------------ rebalance

    async def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._commits.assign(self._consumer, assigned)
        stateful = self.stage.stateful
        if stateful is not None:
            # Before any new record: the state the partitions' previous owners had.
            await replay_history(self.stage, stateful, self._config.kafka, self._bootstrap,
                                 self._commits.committed_offsets(), self._limits)
        log.info("partitions_assigned", stage=self.stage.name,
                 partitions=sorted(tp.partition for tp in assigned))
        self.ready.set()

    async def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        """Stop dispatching for ``revoked``, let their work finish up to a deadline, commit."""
        mine = self._commits.owned(revoked)
        await self._drain(mine, self._rt.revoke_drain_timeout_s)
        await self._commits.commit(self._consumer, only=mine)
        self._commits.forget(mine)
        self._window.forget(mine)
        if mine:
            log.info("partitions_revoked", stage=self.stage.name,
                     partitions=sorted(tp.partition for tp in mine))

    # ------------------------------------------------------------------ introspection

    @property
    def handled(self) -> int:
        """Inputs whose outputs were encoded (and sent, or being sent)."""
        return self._handling.handled

    @property
    def dead_lettered(self) -> int:
        return self._dead_letters.dead_lettered

    @property
    def inflight(self) -> int:
        return self._window.inflight

    def committed_offsets(self) -> dict[TopicPartition, int | None]:
        return self._commits.committed_offsets()
