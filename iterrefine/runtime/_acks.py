"""Waiting for the broker's acks of a group of inputs' outputs, through future callbacks.

An input counts as done only once every output it produced is acknowledged. A task
awaiting those acks would cost more CPU than the rest of a Kafka hop, so a group of
inputs (one message, or a whole fetched batch of an inline stage) shares one small
object that waits for them (see :class:`AckGroup`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaError

from iterrefine.runtime._messages import Outgoing, Sent
from iterrefine.runtime._offsets import PartitionTracker

#: Called once with every input of the group whose outputs were all acknowledged.
OnDelivered = Callable[[PartitionTracker, list[Sent]], None]
#: Called once per input whose delivery failed: it must be sent again.
OnFailed = Callable[[ConsumerRecord, PartitionTracker, list[Outgoing], BaseException], None]


class AckGroup:
    """Waits for the acks of ``sent``; all in → ``on_delivered``; a failure → ``on_failed``.

    An input with a failed output is handed to ``on_failed`` (once) and left out of
    ``on_delivered``; the others of the group are not held back by it.

    It does not take a callback per future: the producer acknowledges whole batches,
    so it waits for one future at a time (the last first: usually acked last), then
    walks the list from where it stopped and waits again at the first one not done.
    """

    __slots__ = ("_failed", "_futures", "_next", "_on_delivered", "_on_failed", "_sent",
                 "_tracker")

    def __init__(
        self, tracker: PartitionTracker, sent: list[Sent], *,
        on_delivered: OnDelivered, on_failed: OnFailed,
    ) -> None:
        self._tracker = tracker
        self._sent = sent
        self._on_delivered = on_delivered
        self._on_failed = on_failed
        self._failed: set[int] | None = None
        #: (index in sent, future) for every output, in send order.
        self._futures = [
            (index, future) for index, one in enumerate(sent) for future in one.acks
        ]
        self._next = 0
        if self._futures:
            self._futures[-1][1].add_done_callback(self._resume)
        else:
            self._finish()

    def _resume(self, _: asyncio.Future[Any]) -> None:
        futures = self._futures
        position = self._next
        while position < len(futures):
            index, future = futures[position]
            if not future.done():
                self._next = position
                future.add_done_callback(self._resume)
                return
            if future.cancelled() or future.exception() is not None:
                self._fail(index, future)
            position += 1
        self._next = position
        self._finish()

    def _fail(self, index: int, future: asyncio.Future[Any]) -> None:
        if self._failed is None:
            self._failed = set()
        elif index in self._failed:
            return
        self._failed.add(index)
        error = KafkaError("cancelled") if future.cancelled() else future.exception()
        assert error is not None
        failed = self._sent[index]
        self._on_failed(failed.record, self._tracker, failed.outgoing, error)

    def _finish(self) -> None:
        failed = self._failed
        if failed is None:
            self._on_delivered(self._tracker, self._sent)
            return
        self._on_delivered(self._tracker, [
            sent for index, sent in enumerate(self._sent) if index not in failed
        ])
