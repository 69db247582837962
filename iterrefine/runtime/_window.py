"""The in-flight window: how many messages are being worked on, the tasks doing that work
per partition, and the signals the fetch loop and the drains wait on.

A message takes a slot when it is dispatched and gives it back when it is finished
(its outputs acknowledged) or abandoned (cancelled, left uncommitted). The fetch loop
stops taking records while the window is full (backpressure), and a drain (revoke,
shutdown) waits here for the work of the partitions it lets go.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine, Iterable
from typing import Any

from aiokafka.structs import TopicPartition
from prometheus_client import Gauge

from iterrefine.runtime._offsets import PartitionTracker


class Window:
    """At most ``max_in_flight`` messages at once, and the tasks working on them."""

    def __init__(self, max_in_flight: int, *, gauge: Gauge) -> None:
        self.max_in_flight = max_in_flight
        self.inflight = 0
        # Once full, fetch again only when a quarter of the window is free: refilling one
        # slot at a time makes every getmany return a record or two, and a fetch round
        # trip costs far more than the record.
        self.refill_at = max(1, max_in_flight // 4)
        self._gauge = gauge
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        self._slot_freed = asyncio.Event()
        self._progress = asyncio.Event()  # a message finished (drains wait on it)

    @property
    def free(self) -> int:
        return self.max_in_flight - self.inflight

    def report(self) -> None:
        """Set the in-flight gauge."""
        self._gauge.set(self.inflight)

    def take(self, n: int) -> None:
        self.inflight += n

    def release(self, n: int) -> None:
        """``n`` messages are finished or abandoned: their slots are free."""
        self.inflight -= n
        self._progress.set()
        # Wake the fetch loop only once there is room for a worthwhile batch.
        if self.max_in_flight - self.inflight >= self.refill_at:
            self._slot_freed.set()

    async def wait_for_room(self, timeout_s: float) -> None:
        """Until there is room for a worthwhile batch, or ``timeout_s`` passed."""
        self._slot_freed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._slot_freed.wait()

    def spawn(self, tp: TopicPartition, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task that drains and revokes of ``tp`` wait for."""
        tasks = self._tasks.setdefault(tp, set())
        task = asyncio.create_task(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """``partitions`` were revoked: their (finished or cancelled) tasks are not ours."""
        for tp in partitions:
            self._tasks.pop(tp, None)

    async def finish_tasks(self, partitions: Iterable[TopicPartition], timeout_s: float) -> None:
        """Let the handlers of ``partitions`` finish up to ``timeout_s``; cancel the rest.

        What is cancelled stays uncommitted, so whoever owns the partition next
        processes it again.
        """
        tasks = {t for tp in partitions for t in self._tasks.get(tp, ())}
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=timeout_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def wait_for_acks(self, trackers: list[PartitionTracker], deadline: float) -> None:
        """Until ``trackers`` have nothing in flight (their acks are in), or ``deadline``."""
        # Acks arrive through future callbacks, each of which sets _progress.
        while any(t.inflight for t in trackers):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._progress.wait()
