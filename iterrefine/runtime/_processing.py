"""The two ways fetched records are worked on, each inside its own error boundary.

A waiting handler gets a task per message, so hundreds wait on LLM calls at once. An
inline handler (one that never waits) gets one task per fetched batch of a partition,
which makes the Kafka hop several times cheaper; a message of that batch whose handler
fails retriably moves to a task of its own to be retried with backoff. Either way the
record's messages are queued in the producer and its acks finish it later. A
cancelled task (revoke, shutdown) or a bug in the runtime leaves its records
uncommitted: the partition's next owner processes them again.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition
from prometheus_client import Histogram

from iterrefine.errors import LLMUnavailable
from iterrefine.runtime._delivery import Delivery
from iterrefine.runtime._handling import Handling, RetryInTask, enter_unit_of_work
from iterrefine.runtime._messages import Outgoing, Sent
from iterrefine.runtime._offsets import PartitionTracker
from iterrefine.runtime._window import Window

log = structlog.get_logger("iterrefine.runtime")


class Processing:
    """Starts and runs the tasks that handle one stage's records."""

    def __init__(
        self, stage: str, *, handling: Handling, delivery: Delivery, window: Window,
        seconds: Histogram,
    ) -> None:
        self._stage = stage
        self._handling = handling
        self._delivery = delivery
        self._window = window
        self._seconds = seconds

    def start(
        self, tp: TopicPartition, records: list[ConsumerRecord], tracker: PartitionTracker
    ) -> None:
        """Start ``records`` (taken into the window): a task each, or one for an inline stage."""
        if self._handling.inline is not None:
            self._window.spawn(tp, self.process_inline(records, tracker))
            return
        # One task per message, each in its own context (see UNIT_OF_WORK). Starting
        # them eagerly would save ~20 µs each, but on Python 3.11 the first step would
        # run inside this task: an asyncio.timeout() entered there would cancel the
        # fetch loop (3.12's eager tasks avoid that).
        for record in records:
            self._window.spawn(tp, self.process(record, tracker))

    async def process(
        self, record: ConsumerRecord, tracker: PartitionTracker,
        first_error: Exception | None = None,
    ) -> None:
        """Handle one message and hand its outputs to the producer; acks finish it later.

        Runs in its own task, hence its own context: every event it logs (dead letters
        and delivery retries included) says where its message came from.
        ``first_error``: the inline batch already tried once and failed retriably.
        """
        unit = enter_unit_of_work(self._stage, record)
        outgoing: list[Outgoing] = []
        try:
            outgoing = await self._handling.handle(record, unit, first_error)
            futures = await self._delivery.send(outgoing, record.partition)
        except asyncio.CancelledError:
            # Stays uncommitted: the next owner processes it again.
            self._delivery.abandoned(tracker)
            raise
        except KafkaError as exc:
            await self._delivery.redeliver(record, tracker, outgoing, exc)
            return
        except LLMUnavailable as exc:  # the endpoint is down, not the item: never dead-letter
            log.warning("handler_abandoned", reason=exc.reason, message=str(exc)[:300])
            self._delivery.abandoned(tracker)  # stays uncommitted: a later run or worker redoes it
            return
        except Exception:  # a bug in the runtime itself: keep the partition from advancing
            log.exception("stage_internal_error")
            self._delivery.abandoned(tracker)
            return
        self._delivery.await_acks(tracker, [Sent(record=record, outgoing=outgoing, acks=futures)])

    async def process_inline(
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
                unit = enter_unit_of_work(self._stage, record)
                started = time.perf_counter()
                try:
                    outgoing = self._handling.handle_inline(record, unit, handler)
                finally:
                    timed += 1
                    handler_s += time.perf_counter() - started
                if isinstance(outgoing, RetryInTask):  # retried with backoff in a task of its own
                    tp = TopicPartition(record.topic, record.partition)
                    self._window.spawn(tp, self.process(record, tracker, outgoing.cause))
                    continue
                try:
                    futures = await self._delivery.send(outgoing, record.partition)
                except KafkaError as exc:
                    self._delivery.redeliver_later(record, tracker, outgoing, exc)
                    continue
                sent.append(Sent(record=record, outgoing=outgoing, acks=futures))
        except asyncio.CancelledError:
            for _ in records[position:]:
                self._delivery.abandoned(tracker)  # stay uncommitted: the next owner redoes them
            raise
        except Exception:  # a bug in the runtime itself: keep the partition from advancing
            log.exception("stage_internal_error")
            for _ in records[position:]:
                self._delivery.abandoned(tracker)
        finally:
            self._delivery.await_acks(tracker, sent)
            if timed:  # one observation per batch: its mean time per item
                self._seconds.observe(handler_s / timed)
