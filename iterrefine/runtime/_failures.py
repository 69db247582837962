"""When a handler fails: retry what is worth retrying, dead-letter what failed for good.

The runtime catches a handler's errors broadly only to hand them to this policy. A
retriable error (``IterrefineError.retriable``) is retried with jittered exponential
backoff, honouring ``Retry-After``; a non-retriable one, or the last of
``retry_max_attempts``, gives up. What gives up becomes a dead letter: the record's
original bytes, keyed by the item's id, with headers naming the stage, the reason and
the attempts (:mod:`iterrefine.runtime.dlq`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import msgspec
import structlog
from aiokafka import ConsumerRecord

from iterrefine.errors import TransientError
from iterrefine.item.model import Item
from iterrefine.observe.metrics import Metrics
from iterrefine.retry import Backoff, is_retriable
from iterrefine.runtime._messages import Outgoing
from iterrefine.runtime.dlq import dlq_headers, dlq_key, dlq_reason
from iterrefine.runtime.stage import Handler, Output

log = structlog.get_logger("iterrefine.runtime")


class GaveUp(msgspec.Struct, frozen=True, kw_only=True):
    """The handler failed for good: ``cause`` goes to the DLQ after ``attempts`` tries."""

    cause: Exception
    attempts: int


class Retry:
    """Calls a handler again after a failure, for as long as the failure is worth it."""

    def __init__(self, handler: Handler, *, backoff: Backoff, max_attempts: int) -> None:
        self._handler = handler
        self._backoff = backoff
        self._max_attempts = max_attempts

    async def after(self, item: Item, error: Exception) -> Sequence[Output] | GaveUp:
        """Retry after ``error`` (the first attempt's) with jittered backoff.

        The handler's outputs, or how it failed for good: a non-retriable error (at once)
        or the last error once ``retry_max_attempts`` tries are used up.
        """
        attempts = 1
        while True:
            if not is_retriable(error) or attempts >= self._max_attempts:
                return GaveUp(cause=error, attempts=attempts)
            retry_after = error.retry_after_s if isinstance(error, TransientError) else None
            delay = self._backoff.delay_s(attempts - 1, retry_after)
            log.info("handler_retry", attempt=attempts, error=type(error).__name__,
                     delay_s=round(delay, 3))
            await asyncio.sleep(delay)
            attempts += 1
            try:
                return await self._handler(item)
            except Exception as exc:
                error = exc


class DeadLetters:
    """Builds one stage's dead letters, and counts them (``dlq_total`` by reason)."""

    def __init__(self, stage: str, *, topic: str, metrics: Metrics) -> None:
        self._stage = stage
        self._topic = topic
        self._metrics = metrics
        self.dead_lettered = 0

    def give_up(
        self, record: ConsumerRecord, item: Item, cause: Exception, *, attempts: int
    ) -> Outgoing:
        """The dead letter of a decoded item whose handling failed for good."""
        log.warning("handler_failed", error=type(cause).__name__, reason=dlq_reason(cause),
                    message=str(cause)[:300], attempts=attempts)
        return self.dead_letter(record, cause, attempts=attempts, item=item)

    def dead_letter(
        self, record: ConsumerRecord, exc: BaseException, *, attempts: int,
        item: Item | None = None,
    ) -> Outgoing:
        """``record``'s original bytes to the DLQ, with headers saying why."""
        reason = dlq_reason(exc)
        self.dead_lettered += 1
        self._metrics.dlq_total.labels(self._stage, reason).inc()
        # item_id, stage, topic, partition and offset come from the unit of work.
        log.warning("dead_lettered", reason=reason, message=str(exc)[:300])
        headers = dlq_headers(record, stage=self._stage, exc=exc, attempts=attempts,
                              item=item)
        key = item.id.encode() if item is not None else dlq_key(record)
        return Outgoing(topic=self._topic, key=key, value=record.value or b"",
                        headers=headers, outcome="dlq")
