"""What a stage is: an input topic, a decoder, and a handler.

A handler receives one :class:`Item` and returns the messages to produce
(:class:`Output`). The runtime owns everything else: consuming, concurrency,
delivery, commits, retries, dead-lettering, metrics.

A handler that waits (an LLM call) is an ``async def``: each message gets its own
task, so hundreds wait at once. A handler that never waits (routing, a filter) may
be a plain function: the runtime then runs it *inline*, a whole fetched batch in one
task, which makes the Kafka hop several times cheaper than a task per message.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from iterrefine.model import (
    DEFAULT_MAX_ENVELOPE_BYTES,
    DEFAULT_MAX_RAW_BYTES,
    Item,
    Source,
    decode_item,
    item_from_raw,
)


class RecordLike(Protocol):
    """The part of an aiokafka ``ConsumerRecord`` the runtime relies on."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Output:
    """One message a handler wants produced.

    ``topic`` is logical (``items.curated``); ``outcome`` labels the metric and
    defaults to the topic's last part (``curated``).
    """

    topic: str
    item: Item
    outcome: str | None = None

    @property
    def outcome_label(self) -> str:
        return self.outcome or default_outcome(self.topic)


def default_outcome(topic: str) -> str:
    """The outcome label of an output to ``topic`` that names none: the topic's last part."""
    return topic.rsplit(".", 1)[-1]


Handler = Callable[[Item], Awaitable[Sequence[Output]]]
#: A handler that never waits: run inline, a fetched batch at a time.
InlineHandler = Callable[[Item], Sequence[Output]]
Decoder = Callable[[RecordLike, "Limits"], Item]


@dataclass(frozen=True, slots=True)
class Limits:
    max_item_bytes: int = DEFAULT_MAX_RAW_BYTES
    max_envelope_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES


def decode_raw_record(record: RecordLike, limits: Limits) -> Item:
    """``items.raw``: an Alpaca/Dolly record (validated) becomes a fresh item.

    The record's timestamp is the item's revision: a redelivery of the same record
    keeps it (so the exporter drops the duplicate), a replay writes a newer one.
    """
    source = Source(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp,
    )
    return item_from_raw(
        record.value or b"",
        max_bytes=limits.max_item_bytes,
        source=source,
        revision=record.timestamp,
    )


def decode_envelope(record: RecordLike, limits: Limits) -> Item:
    return decode_item(record.value or b"", max_bytes=limits.max_envelope_bytes)


@dataclass(frozen=True)
class Stage:
    name: str
    input_topic: str  # logical
    handler: Handler | InlineHandler
    decode: Decoder = decode_envelope
    #: True when ``handler`` is a plain function (see the module docstring).
    inline: bool = field(init=False)

    def __post_init__(self) -> None:
        handler = self.handler
        # A function, or an object whose __call__ is an ``async def``.
        waits = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            type(handler).__call__
        )
        object.__setattr__(self, "inline", not waits)
