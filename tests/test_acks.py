"""AckGroup: an input is done once all its outputs are acked; a failed one is redelivered."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaTimeoutError

from iterrefine.runtime._acks import AckGroup
from iterrefine.runtime._messages import Outgoing, Sent
from iterrefine.runtime._offsets import PartitionTracker

pytestmark = pytest.mark.unit


def _record(offset: int) -> ConsumerRecord:
    return ConsumerRecord("t", 0, offset, 0, 0, b"k", b"v", None, 1, 1, [])


def _outgoing(n: int) -> list[Outgoing]:
    return [Outgoing(topic="out", key=b"k", value=b"v", outcome="scored")] * n


class _Calls:
    def __init__(self) -> None:
        self.delivered: list[list[int]] = []
        self.failed: list[int] = []

    def on_delivered(self, _tracker: PartitionTracker, sent: list[Sent]) -> None:
        self.delivered.append([one.record.offset for one in sent])

    def on_failed(self, record: ConsumerRecord, _tracker: PartitionTracker,
                  _outgoing: list[Outgoing], _error: BaseException) -> None:
        self.failed.append(record.offset)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_delivered_once_when_every_future_is_done_in_any_order() -> None:
    loop = asyncio.get_running_loop()
    futures: list[list[asyncio.Future[Any]]] = [[loop.create_future() for _ in range(k)]
                                                 for k in (1, 2, 0, 3)]
    sent = [Sent(record=_record(i), outgoing=_outgoing(len(f)), acks=f)
            for i, f in enumerate(futures)]
    calls = _Calls()
    AckGroup(PartitionTracker(), sent, on_delivered=calls.on_delivered,
             on_failed=calls.on_failed)
    flat = [f for fs in futures for f in fs]
    for future in reversed(flat[1:]):  # the last first, then backwards: many wake-ups
        future.set_result(None)
        await _settle()
        assert calls.delivered == []
    flat[0].set_result(None)
    await _settle()
    assert calls.delivered == [[0, 1, 2, 3]] and calls.failed == []


async def test_a_failed_output_redelivers_only_its_input() -> None:
    loop = asyncio.get_running_loop()
    futures = [[loop.create_future(), loop.create_future()], [loop.create_future()]]
    sent = [Sent(record=_record(i), outgoing=_outgoing(len(f)), acks=f)
            for i, f in enumerate(futures)]
    calls = _Calls()
    AckGroup(PartitionTracker(), sent, on_delivered=calls.on_delivered,
             on_failed=calls.on_failed)
    futures[0][0].set_exception(KafkaTimeoutError())
    futures[0][1].set_exception(KafkaTimeoutError())  # same input: handed over once
    futures[1][0].set_result(None)
    await _settle()
    assert calls.failed == [0]
    assert calls.delivered == [[1]]


async def test_nothing_to_wait_for_is_delivered_at_once() -> None:
    calls = _Calls()
    AckGroup(PartitionTracker(), [Sent(record=_record(0), outgoing=[], acks=[])],
             on_delivered=calls.on_delivered,
             on_failed=calls.on_failed)
    assert calls.delivered == [[0]]
