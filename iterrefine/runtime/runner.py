"""The stage runner: consume → handle concurrently → produce → commit the done prefix.

One runner drives one stage in one process. Many messages of one partition are
handled at once (LLM calls are slow), bounded by ``max_in_flight``; an input counts
as done only after every output it produced was acknowledged by the broker
(at-least-once), and per partition only the contiguous prefix of done offsets is
committed (:mod:`iterrefine.runtime._offsets`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from iterrefine.config import Config
from iterrefine.errors import BrokerError, LLMUnavailable
from iterrefine.kafka.clients import make_consumer, make_producer
from iterrefine.kafka.topics import TopicNames
from iterrefine.observe.metrics import Metrics
from iterrefine.retry import Backoff
from iterrefine.runtime._acks import AckGroup
from iterrefine.runtime._commits import Commits
from iterrefine.runtime._failures import DeadLetters
from iterrefine.runtime._handling import Handling, RetryInTask, enter_unit_of_work
from iterrefine.runtime._messages import Outgoing, Sent
from iterrefine.runtime._offsets import PartitionTracker
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
        self._rt = config.runtime
        self._bootstrap = bootstrap_servers
        self._topics = TopicNames(config.kafka.topic_prefix)
        self._input_topic = self._topics[stage.input_topic]
        self.group_id = group_id or f"{config.kafka.topic_prefix}{stage.name}"
        self._metrics = metrics or Metrics()
        self._backoff = Backoff(base_s=self._rt.retry_base_s, max_s=self._rt.retry_max_s)
        # Inline handlers send nothing, and do best with big batches; see dispatch_batch.
        self._per_poll = self._rt.fetch_max_records if stage.inline else min(
            self._rt.fetch_max_records, self._rt.dispatch_batch)
        self._dead_letters = DeadLetters(stage.name, topic=self._topics["items.dlq"],
                                         metrics=self._metrics)
        self._m_seconds = self._metrics.stage_seconds.labels(stage.name)
        self._handling = Handling(
            stage, topics=self._topics,
            limits=Limits(self._rt.max_item_bytes, self._rt.max_envelope_bytes),
            backoff=self._backoff, retry_max_attempts=self._rt.retry_max_attempts,
            dead_letters=self._dead_letters, seconds=self._m_seconds,
        )
        #: Output topic → whether it has the input topic's partitions (see _send).
        self._same_partitions: dict[str, bool] = {}
        self._own_producer = producer is None
        self._producer = producer
        self._consumer: AIOKafkaConsumer | None = None
        self._window = Window(self._rt.max_in_flight,
                              gauge=self._metrics.inflight.labels(stage.name))
        self._commits = Commits(stage.name, metrics=self._metrics)
        self._paused = False
        #: When the window last filled up (None while there is room).
        self._full_since: float | None = None
        #: A full window calls getmany this often, well inside max_poll_interval_ms.
        self._keepalive_s = self._rt.max_poll_interval_ms / 1000 / 4
        #: Set once the consumer got its first assignment (readiness).
        self.ready = asyncio.Event()
        self._m_outcomes: dict[str, Any] = {}

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
            fetch_max_wait_ms=self._rt.fetch_max_wait_ms,
        )
        static = self._rt.static_partitions
        if static is None:
            consumer.subscribe([self._input_topic], listener=_Rebalance(self))
        self._consumer = consumer
        if not await _unless_stopped(consumer.start(), stop):
            # A group that never lets us join (Tansu can keep members of an earlier run)
            # must not make SIGTERM hang: give up the join and leave.
            await consumer.stop()
            if self._own_producer:
                await self._producer.stop()
            log.warning("stage_stopped_before_joining", stage=self.stage.name,
                        group=self.group_id)
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
        try:
            next_commit = time.monotonic() + self._rt.commit_interval_ms / 1000
            while not stop.is_set():
                # Raced with stop: a poll waits up to fetch_timeout_ms for records, and a
                # stop should not wait for it. A cancelled poll took no records (aiokafka
                # hands them over only when getmany returns).
                if not await _unless_stopped(self._poll_once(consumer), stop):
                    break
                if time.monotonic() >= next_commit:
                    await self._commits.commit(consumer)
                    self._commits.update_lag(consumer)
                    next_commit = time.monotonic() + self._rt.commit_interval_ms / 1000
        finally:
            await self._shutdown(consumer)

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[int]:
        """The input topic's partition numbers (asking the broker if not yet known)."""
        found = consumer.partitions_for_topic(self._input_topic)
        if not found:
            await consumer.topics()  # a metadata request for every topic
            found = consumer.partitions_for_topic(self._input_topic)
        if not found:
            raise BrokerError(f"topic {self._input_topic} does not exist on the broker")
        return sorted(found)

    async def _shutdown(self, consumer: AIOKafkaConsumer) -> None:
        inflight = self._window.inflight
        if inflight:
            log.info("stage_draining", stage=self.stage.name, inflight=inflight,
                     deadline_s=self._rt.drain_timeout_s)
            await self._drain(self._commits.partitions, self._rt.drain_timeout_s)
        self._window.report()  # the last poll was cut short by the stop
        await self._commits.commit(self._consumer)
        await consumer.stop()
        if self._own_producer and self._producer is not None:
            await self._producer.stop()
        log.info("stage_stopped", stage=self.stage.name, handled=self.handled,
                 dead_lettered=self.dead_lettered)

    async def _drain(self, partitions: list[TopicPartition], timeout_s: float) -> None:
        """Let ``partitions``' work finish (handlers, then broker acks) up to a deadline.

        What is still running then is cancelled: it stays uncommitted, so whoever owns
        the partition next processes it again.
        """
        deadline = time.monotonic() + timeout_s
        await self._window.finish_tasks(partitions, timeout_s)
        await self._window.wait_for_acks(self._commits.trackers(partitions), deadline)

    # ------------------------------------------------------------------ fetching

    async def _poll_once(self, consumer: AIOKafkaConsumer) -> None:
        free = self._window.free
        held = self.stage.hold is not None and self.stage.hold()
        if held or free <= 0 or (self._full_since is not None and free < self._window.refill_at):
            await self._wait_for_room(consumer)
            return
        self._full_since = None
        if self._paused:
            consumer.resume(*consumer.assignment())
            self._paused = False
        want = min(free, self._per_poll)
        batch = await consumer.getmany(timeout_ms=self._rt.fetch_timeout_ms, max_records=want)
        self._dispatch(consumer, batch)
        self._window.report()  # every poll, so it falls back to 0 when idle
        if sum(map(len, batch.values())) >= want:
            # More may be buffered, and getmany hands it over without yielding: let the
            # records just started run (and their requests leave) before the next ones.
            await asyncio.sleep(0)

    async def _wait_for_room(self, consumer: AIOKafkaConsumer) -> None:
        """The window is full: take nothing more until a worthwhile part of it is free.

        Not consuming already stops fetching: aiokafka fetches a partition again only
        once its buffered records were taken. ``pause()`` would also throw that buffer
        away (aiokafka drops fetched records of paused partitions), so every refill would
        fetch it again; pause only when the window stays full so long that getmany must
        be called to stay in the group (``max_poll_interval_ms``).
        """
        now = time.monotonic()
        if self._full_since is None:
            self._full_since = now
        await self._window.wait_for_room(self._rt.fetch_timeout_ms / 1000)
        self._window.report()
        if now - self._full_since < self._keepalive_s:
            return
        # Pause the whole current assignment every time: a rebalance meanwhile may
        # have added partitions that are not paused yet.
        consumer.pause(*consumer.assignment())
        self._paused = True
        self._full_since = time.monotonic()
        # Whatever this returns is dispatched, never dropped: its position has moved.
        self._dispatch(consumer, await consumer.getmany(timeout_ms=0))

    def _dispatch(
        self, consumer: AIOKafkaConsumer, batch: dict[TopicPartition, list[ConsumerRecord]]
    ) -> None:
        """Start the fetched records: a task each, or a task per batch for inline stages."""
        if not batch:
            return
        assignment = consumer.assignment()
        for tp, records in batch.items():
            if tp not in assignment:
                continue  # taken away meanwhile: its new owner reads from the committed offset
            tracker = self._commits.tracker(tp)
            for record in records:
                tracker.received(record.offset)
            self._window.take(len(records))
            if self._handling.inline is not None:
                self._window.spawn(tp, self._process_inline(records, tracker))
                continue
            # One task per message, each in its own context (see UNIT_OF_WORK). Starting
            # them eagerly would save ~20 µs each, but on Python 3.11 the first step would
            # run inside this task: an asyncio.timeout() entered there would cancel the
            # fetch loop (3.12's eager tasks avoid that).
            for record in records:
                self._window.spawn(tp, self._process(record, tracker))

    # ------------------------------------------------------------------ processing

    async def _process(
        self, record: ConsumerRecord, tracker: PartitionTracker,
        first_error: Exception | None = None,
    ) -> None:
        """Handle one message and hand its outputs to the producer; acks finish it later.

        Runs in its own task, hence its own context: every event it logs (dead letters
        and delivery retries included) says where its message came from.
        ``first_error``: the inline batch already tried once and failed retriably.
        """
        unit = enter_unit_of_work(self.stage.name, record)
        outgoing: list[Outgoing] = []
        try:
            outgoing = await self._handling.handle(record, unit, first_error)
            futures = await self._send(outgoing, record.partition)
        except asyncio.CancelledError:
            self._abandoned(tracker)  # stays uncommitted: the next owner processes it again
            raise
        except KafkaError as exc:
            await self._redeliver(record, tracker, outgoing, exc)
            return
        except LLMUnavailable as exc:  # the endpoint is down, not the item: never dead-letter
            log.warning("handler_abandoned", reason=exc.reason, message=str(exc)[:300])
            self._abandoned(tracker)  # stays uncommitted: a later run or worker redoes it
            return
        except Exception:  # a bug in the runtime itself: keep the partition from advancing
            log.exception("stage_internal_error")
            self._abandoned(tracker)
            return
        self._await_acks(tracker, [Sent(record=record, outgoing=outgoing, acks=futures)])

    async def _process_inline(
        self, records: list[ConsumerRecord], tracker: PartitionTracker
    ) -> None:
        """Handle a fetched batch of one partition with a handler that never waits.

        One task for the batch; each message is decoded, handled and queued in the
        producer in turn (in offset order), and the batch shares one ack counter.
        """
        handler = self._handling.inline
        assert handler is not None
        sent: list[Sent] = []
        position = 0  # records before this one are sent or handed elsewhere
        timed, handler_s = 0, 0.0
        try:
            for position in range(len(records)):
                record = records[position]
                unit = enter_unit_of_work(self.stage.name, record)
                started = time.perf_counter()
                try:
                    outgoing = self._handling.handle_inline(record, unit, handler)
                finally:
                    timed += 1
                    handler_s += time.perf_counter() - started
                if isinstance(outgoing, RetryInTask):  # retried with backoff in a task of its own
                    tp = TopicPartition(record.topic, record.partition)
                    self._window.spawn(tp, self._process(record, tracker, outgoing.cause))
                    continue
                try:
                    futures = await self._send(outgoing, record.partition)
                except KafkaError as exc:
                    self._redeliver_later(record, tracker, outgoing, exc)
                    continue
                sent.append(Sent(record=record, outgoing=outgoing, acks=futures))
        except asyncio.CancelledError:
            for _ in records[position:]:
                self._abandoned(tracker)  # stay uncommitted: the next owner redoes them
            raise
        except Exception:  # a bug in the runtime itself: keep the partition from advancing
            log.exception("stage_internal_error")
            for _ in records[position:]:
                self._abandoned(tracker)
        finally:
            self._await_acks(tracker, sent)
            if timed:  # one observation per batch: its mean time per item
                self._m_seconds.observe(handler_s / timed)

    # ------------------------------------------------------------------ delivery

    async def _send(self, outgoing: list[Outgoing], partition: int) -> list[asyncio.Future[Any]]:
        """Queue ``outgoing`` in the producer (normally without waiting); futures of the acks.

        An item keeps its partition number from topic to topic when the partition counts
        match (they do unless someone changed one): its key is its id, so that is where
        key hashing would put it anyway, and the pure-Python murmur2 is skipped.
        """
        assert self._producer is not None
        futures = []
        for out in outgoing:
            same = self._same_partitions.get(out.topic)
            if same is None:
                same = await self._learn_partitioning(out.topic)
            futures.append(await self._producer.send(
                out.topic, out.value, key=out.key, headers=out.headers,
                partition=partition if same else None,
            ))
        return futures

    async def _learn_partitioning(self, topic: str) -> bool:
        assert self._producer is not None and self._consumer is not None
        mine = self._consumer.partitions_for_topic(self._input_topic)
        theirs = await self._producer.partitions_for(topic)
        same = bool(mine) and mine == theirs
        self._same_partitions[topic] = same
        return same

    def _await_acks(self, tracker: PartitionTracker, sent: list[Sent]) -> None:
        if sent:
            AckGroup(tracker, sent, on_delivered=self._delivered,
                     on_failed=self._redeliver_later)

    def _delivered(self, tracker: PartitionTracker, messages: list[Sent]) -> None:
        """Every output of these inputs is acknowledged: they may now be committed."""
        counts: dict[str, int] = {}
        for sent in messages:
            tracker.finished(sent.record.offset)
            for out in sent.outgoing:
                counts[out.outcome] = counts.get(out.outcome, 0) + 1
        for outcome, n in counts.items():  # one metric update per outcome, not per message
            self._count(outcome, n)
        self._window.release(len(messages))

    def _abandoned(self, tracker: PartitionTracker) -> None:
        tracker.abandoned()
        self._window.release(1)

    def _redeliver_later(
        self, record: ConsumerRecord, tracker: PartitionTracker, outgoing: list[Outgoing],
        error: BaseException,
    ) -> None:
        tp = TopicPartition(record.topic, record.partition)
        self._window.spawn(tp, self._redeliver(record, tracker, outgoing, error))

    async def _redeliver(
        self, record: ConsumerRecord, tracker: PartitionTracker, outgoing: list[Outgoing],
        error: BaseException,
    ) -> None:
        """The broker did not take the outputs: retry until it does (or we are cancelled)."""
        enter_unit_of_work(self.stage.name, record)
        attempt = 0
        try:
            while True:
                delay = self._backoff.delay_s(min(attempt, 8))
                attempt += 1
                log.warning("delivery_retry", error=type(error).__name__, attempt=attempt,
                            delay_s=round(delay, 3))
                await asyncio.sleep(delay)
                try:
                    for future in await self._send(outgoing, record.partition):
                        await future
                except KafkaError as exc:
                    error = exc
                    continue
                self._delivered(tracker, [Sent(record=record, outgoing=outgoing, acks=[])])
                return
        except asyncio.CancelledError:
            self._abandoned(tracker)
            raise

    def _count(self, outcome: str, n: int) -> None:
        counter = self._m_outcomes.get(outcome)
        if counter is None:
            counter = self._m_outcomes[outcome] = self._metrics.items_total.labels(
                self.stage.name, outcome
            )
        counter.inc(n)

    # ------------------------------------------------------------------ rebalance

    async def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._commits.assign(self._consumer, assigned)
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
