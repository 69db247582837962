"""Idle means idle: a consumer with nothing to read stops fetching until there is.

Every stage polls its input topic with a fetch held at most ``fetch_max_wait_ms`` (100 ms:
a quiet hop must not add more, see :class:`~iterrefine.config.RuntimeConfig`), and the
embedded Tansu broker holds each fetch for the whole wait. While every item waits on a
slow endpoint (a real model: 30 s a call) five stages and the terminal watcher kept
fetching ten times a second: about a third of a core between the run's process and the
broker, for nothing.

:class:`IdleRest` makes a consumer rest after :data:`EMPTY_POLLS_BEFORE_REST` empty
polls: its partitions are paused (aiokafka then sends no fetch for them) and it waits,
from :data:`FIRST_REST_S` doubling up to ``idle_poll_max_ms``, before polling again. A
record produced to the topic by this process — a stage's output, ingest, a dead letter
— rings the topic's :data:`DOORBELLS` and ends the rest at once, so hops inside one
process keep their latency (``iterrefine run --workers N`` keeps an item's partition,
so its process, from stage to stage); a record from another process is seen after the
rest at most (a stage's ``idle_poll_max_ms``, 10 s by default, 0 turns resting off; the
terminal watcher of a run whose last item may come from another process rests 2 s at
most, so the run ends soon after it).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Iterable
from typing import Final

from aiokafka import AIOKafkaConsumer

__all__ = ["DOORBELLS", "EMPTY_POLLS_BEFORE_REST", "FIRST_REST_S", "Doorbells", "IdleRest"]

EMPTY_POLLS_BEFORE_REST: Final = 5
FIRST_REST_S: Final = 0.25


class Doorbells:
    """Per topic, the events of the consumers resting on it (this process only)."""

    def __init__(self) -> None:
        self._waiting: dict[str, weakref.WeakSet[asyncio.Event]] = {}

    def ring(self, topic: str) -> None:
        """Something was produced to ``topic``: wake whoever rests on it."""
        waiting = self._waiting.get(topic)
        if waiting:
            for event in list(waiting):
                event.set()

    def listen(self, topics: Iterable[str], event: asyncio.Event) -> None:
        for topic in topics:
            self._waiting.setdefault(topic, weakref.WeakSet()).add(event)

    def forget(self, topics: Iterable[str], event: asyncio.Event) -> None:
        for topic in topics:
            waiting = self._waiting.get(topic)
            if waiting is not None:
                waiting.discard(event)


#: The process's doorbells: producers ring them, resting consumers listen.
DOORBELLS: Final = Doorbells()


class IdleRest:
    """Counts a consumer's empty polls and, after enough, rests it (see the module)."""

    def __init__(self, consumer: AIOKafkaConsumer, topics: Iterable[str], *,
                 max_rest_s: float, bells: Doorbells = DOORBELLS) -> None:
        self._consumer = consumer
        self._topics = tuple(topics)
        self._max_rest_s = max_rest_s
        self._bells = bells
        self._empty = 0
        self._rest_s = FIRST_REST_S
        self._bell = asyncio.Event()
        #: Rests taken (for tests and metrics of idleness).
        self.rests = 0

    def polled(self, records: int) -> None:
        """Note what a poll returned."""
        if records:
            self._empty = 0
            self._rest_s = FIRST_REST_S
        else:
            self._empty += 1

    @property
    def due(self) -> bool:
        """Whether the consumer should rest before its next poll."""
        return self._max_rest_s > 0 and self._empty >= EMPTY_POLLS_BEFORE_REST

    async def rest(self) -> None:
        """Pause, wait for the bell or the rest's length, resume."""
        consumer = self._consumer
        assigned = consumer.assignment()
        self._bell.clear()
        self._bells.listen(self._topics, self._bell)
        consumer.pause(*assigned)
        self.rests += 1
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(self._rest_s, self._max_rest_s)):
                    await self._bell.wait()
        finally:
            self._bells.forget(self._topics, self._bell)
            # Only what was paused here: a rebalance meanwhile may have changed it.
            still = [tp for tp in assigned if tp in consumer.assignment()]
            if still:
                consumer.resume(*still)
        if self._bell.is_set():
            self._empty = 0
            self._rest_s = FIRST_REST_S
        else:
            self._empty = EMPTY_POLLS_BEFORE_REST - 1  # one empty poll more: rest again
            self._rest_s = min(self._rest_s * 2, self._max_rest_s)
