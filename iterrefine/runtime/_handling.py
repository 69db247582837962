"""Handling one record: decode it, call the stage's handler, check and encode its outputs.

The answer is the messages to produce for the record: its outputs, or its dead letter
(undecodable or invalid input, a handler that failed for good, outputs that break the
stage's contract). Two answers are left to the caller: an inline handler's retriable
failure (:class:`RetryInTask`), and ``LLMUnavailable``, which propagates because the
endpoint is down, not the item.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from typing import Any, cast

import msgspec
import structlog
from aiokafka import ConsumerRecord
from prometheus_client import Histogram

from iterrefine.errors import LLMUnavailable, ValidationError
from iterrefine.item.model import Item, encode_item
from iterrefine.kafka.topics import DLQ_TOPIC, TopicNames
from iterrefine.observe.logging import UNIT_OF_WORK
from iterrefine.retry import Backoff, is_retriable
from iterrefine.runtime._failures import DeadLetters, GaveUp, Retry
from iterrefine.runtime._messages import Outgoing
from iterrefine.runtime.dlq import dlq_key
from iterrefine.runtime.stage import (
    Handler,
    InlineHandler,
    Limits,
    Output,
    Stage,
    default_outcome,
)

log = structlog.get_logger("iterrefine.runtime")


class RetryInTask(msgspec.Struct, frozen=True):
    """An inline handler failed in a way worth retrying: that message leaves the batch."""

    cause: Exception


def enter_unit_of_work(stage: str, record: ConsumerRecord) -> dict[str, Any]:
    """Describe ``record`` as the unit of work: every event logged for it says so."""
    unit = {
        "stage": stage, "topic": record.topic,
        "partition": record.partition, "offset": record.offset,
    }
    UNIT_OF_WORK.set(unit)
    return unit


class Handling:
    """Turns records of one stage into the messages to produce (see the module docstring)."""

    def __init__(
        self, stage: Stage, *, topics: TopicNames, limits: Limits, backoff: Backoff,
        retry_max_attempts: int, dead_letters: DeadLetters, seconds: Histogram,
    ) -> None:
        self._stage = stage
        self._limits = limits
        self._dead_letters = dead_letters
        self._seconds = seconds
        #: Inputs whose outputs were encoded (dead letters are counted by DeadLetters).
        self.handled = 0
        if stage.inline:
            inline = cast(InlineHandler, stage.handler)
            self.inline: InlineHandler | None = inline

            async def retried(item: Item) -> Sequence[Output]:  # for the retry path
                return inline(item)

            handler: Handler = retried
        else:
            self.inline = None
            declared = stage.handler

            async def waiting(item: Item) -> Sequence[Output]:
                # A stage declared as waiting may still hand over a plain function:
                # that only costs the inline speed-up, so it is served, not refused.
                result = declared(item)
                if inspect.isawaitable(result):
                    return await result
                return result

            handler = waiting
        self._handler = handler
        self._retry = Retry(handler, backoff=backoff, max_attempts=retry_max_attempts)
        #: Declared logical topic → (full topic, default outcome label); nothing else.
        self._destinations = {
            name: (topics[name], default_outcome(name))
            for name in (*stage.outputs, DLQ_TOPIC)
        }

    async def handle(
        self, record: ConsumerRecord, unit: dict[str, Any], first_error: Exception | None,
    ) -> list[Outgoing]:
        """Decode and run the handler; any failure becomes a dead letter (the policy).

        ``first_error``: the inline batch already tried once and failed retriably.
        """
        decoded = self.decode(record, unit)
        if not isinstance(decoded, Item):
            return [decoded]
        item = decoded
        started = time.perf_counter()
        if first_error is not None:
            outputs = await self._retry.after(item, first_error)
        else:
            try:
                outputs = await self._handler(item)  # the fast path: no retry machinery
            except Exception as first:  # a non-retriable one gives up at once, attempts=1
                outputs = await self._retry.after(item, first)
        if isinstance(outputs, GaveUp):  # handed to the dead-letter policy, never swallowed
            if isinstance(outputs.cause, LLMUnavailable):
                # The endpoint is down, not the item: the message is abandoned, not
                # dead-lettered (see the task path in _processing).
                raise outputs.cause from None
            return [self._dead_letters.give_up(record, item, outputs.cause,
                                               attempts=outputs.attempts)]
        try:
            return self._timed(item, self.checked(outputs), started)
        except Exception as exc:  # an undeclared topic, not a list, an unencodable item
            return [self._dead_letters.give_up(record, item, exc, attempts=1)]

    def handle_inline(
        self, record: ConsumerRecord, unit: dict[str, Any], handler: InlineHandler
    ) -> list[Outgoing] | RetryInTask:
        """Decode and run a handler that never waits; a retriable failure is left to a task."""
        decoded = self.decode(record, unit)
        if not isinstance(decoded, Item):
            return [decoded]
        try:
            outputs = self.checked(handler(decoded))
        except Exception as exc:  # user code: retried or dead-lettered, never lost
            if is_retriable(exc):
                return RetryInTask(exc)
            return [self._dead_letters.give_up(record, decoded, exc, attempts=1)]
        try:
            # No per-item timing: an inline handler's microseconds are not worth an item field.
            return self._encode([out.item for out in outputs], outputs)
        except Exception as exc:  # an output item that cannot be encoded
            return [self._dead_letters.give_up(record, decoded, exc, attempts=1)]

    def checked(self, result: object) -> Sequence[Output]:
        """``result`` if it is a list of outputs to declared topics; else StageContractError."""
        return self._stage.checked(result)

    def decode(self, record: ConsumerRecord, unit: dict[str, Any]) -> Item | Outgoing:
        """The record's item, or (undecodable, invalid) its dead letter."""
        try:
            item = self._stage.decoder(record, self._limits)
        except Exception as exc:  # any decoder failure is this record's, never the partition's
            if not isinstance(exc, ValidationError):
                exc = ValidationError(f"the decoder raised {type(exc).__name__}: "
                                      f"{str(exc)[:200]}", reason="undecodable")
            # No item, but the DLQ row's id: the producer's key, else a hash of the bytes.
            unit["item_id"] = dlq_key(record).decode("utf-8", "replace")
            return self._dead_letters.dead_letter(record, exc, attempts=1)
        unit["item_id"] = item.id
        unit["round"] = item.round
        return item

    def _timed(self, item: Item, outputs: Sequence[Output], started: float) -> list[Outgoing]:
        """Encode a waiting handler's outputs, each with the time the stage took."""
        elapsed = time.perf_counter() - started
        self._seconds.observe(elapsed)
        return self._encode(
            [out.item.add_timing(self._stage.name, elapsed) for out in outputs], outputs
        )

    def _encode(self, items: list[Item], outputs: Sequence[Output]) -> list[Outgoing]:
        """``outputs`` as messages; ``items`` are what to write (the outputs' items or copies)."""
        self.handled += 1
        log.debug("item_handled", to=[out.topic for out in outputs])  # + the unit of work
        encoded: list[Outgoing] = []
        for item, out in zip(items, outputs, strict=True):
            topic, default = self._destinations[out.topic]
            encoded.append(Outgoing(topic=topic, key=item.id.encode(), value=encode_item(item),
                                    outcome=out.outcome or default,
                                    partition_by=out.partition_by))
        return encoded
