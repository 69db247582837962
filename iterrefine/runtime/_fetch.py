"""Fetching: take records while the in-flight window has room, hold back while it is
full (backpressure), and dispatch what was fetched to the processing tasks.

Records go out in slices of ``dispatch_batch`` (an inline stage takes whole fetches:
it sends nothing per record and does best with big batches), and a dispatched record
is tracked by its partition's commit point before its task starts.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.structs import TopicPartition

from iterrefine.config import RuntimeConfig
from iterrefine.kafka.idle import IdleRest
from iterrefine.runtime._commits import Commits
from iterrefine.runtime._processing import Processing
from iterrefine.runtime._window import Window
from iterrefine.runtime.stage import Stage


class Fetcher:
    """The poll of one stage's consumer, one call of :meth:`poll_once` at a time."""

    def __init__(
        self, stage: Stage, *, consumer: AIOKafkaConsumer, runtime: RuntimeConfig,
        window: Window, commits: Commits, processing: Processing, topics: tuple[str, ...] = (),
    ) -> None:
        self._hold = stage.hold
        self._consumer = consumer
        self._fetch_timeout_ms = runtime.fetch_timeout_ms
        self._window = window
        self._commits = commits
        self._processing = processing
        # Inline handlers send nothing, and do best with big batches; see dispatch_batch.
        self._per_poll = runtime.fetch_max_records if stage.inline else min(
            runtime.fetch_max_records, runtime.dispatch_batch)
        self._paused = False
        #: When the window last filled up (None while there is room).
        self._full_since: float | None = None
        #: A full window calls getmany this often, well inside max_poll_interval_ms.
        self._keepalive_s = runtime.max_poll_interval_ms / 1000 / 4
        #: Rests the consumer while its topic stays empty (items waiting on an LLM).
        self._idle = IdleRest(consumer, topics, max_rest_s=runtime.idle_poll_max_ms / 1000)

    async def poll_once(self) -> None:
        """Fetch and dispatch what the window has room for, or wait for room."""
        consumer, window = self._consumer, self._window
        free = window.free
        held = self._hold is not None and self._hold()
        if held or free <= 0 or (self._full_since is not None and free < window.refill_at):
            await self._wait_for_room()
            return
        self._full_since = None
        if self._paused:
            consumer.resume(*consumer.assignment())
            self._paused = False
        if self._idle.due:
            await self._idle.rest()
            return
        want = min(free, self._per_poll)
        batch = await consumer.getmany(timeout_ms=self._fetch_timeout_ms, max_records=want)
        self._dispatch(batch)
        window.report()  # every poll, so it falls back to 0 when idle
        got = sum(map(len, batch.values()))
        self._idle.polled(got)
        if got >= want:
            # More may be buffered, and getmany hands it over without yielding: let the
            # records just started run (and their requests leave) before the next ones.
            await asyncio.sleep(0)

    async def _wait_for_room(self) -> None:
        """The window is full: take nothing more until a worthwhile part of it is free.

        Not consuming already stops fetching: aiokafka fetches a partition again only
        once its buffered records were taken. ``pause()`` would also throw that buffer
        away (aiokafka drops fetched records of paused partitions), so every refill would
        fetch it again; pause only when the window stays full so long that getmany must
        be called to stay in the group (``max_poll_interval_ms``).
        """
        consumer = self._consumer
        now = time.monotonic()
        if self._full_since is None:
            self._full_since = now
        await self._window.wait_for_room(self._fetch_timeout_ms / 1000)
        self._window.report()
        if now - self._full_since < self._keepalive_s:
            return
        # Pause the whole current assignment every time: a rebalance meanwhile may
        # have added partitions that are not paused yet.
        consumer.pause(*consumer.assignment())
        self._paused = True
        self._full_since = time.monotonic()
        # Whatever this returns is dispatched, never dropped: its position has moved.
        self._dispatch(await consumer.getmany(timeout_ms=0))

    def _dispatch(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Start the fetched records: a task each, or a task per batch for inline stages."""
        if not batch:
            return
        assignment = self._consumer.assignment()
        for tp, records in batch.items():
            if tp not in assignment:
                continue  # taken away meanwhile: its new owner reads from the committed offset
            tracker = self._commits.tracker(tp)
            for record in records:
                tracker.received(record.offset)
            self._window.take(len(records))
            self._processing.start(tp, records, tracker)
