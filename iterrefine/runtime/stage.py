"""What a stage is: an input topic, a decoder, and a handler.

A handler receives one :class:`Item` and returns the messages to produce
(:class:`Output`). The runtime owns everything else: consuming, concurrency,
delivery, commits, retries, dead-lettering, metrics.

A handler that waits (an LLM call) is an ``async def``: each message gets its own
task, so hundreds wait at once. A handler that never waits (routing, a filter) may
be a plain function: the runtime then runs it *inline*, a whole fetched batch in one
task, which makes the Kafka hop several times cheaper than a task per message. The
stage says which (``waits``); the runtime does not inspect the handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from iterrefine.errors import ConfigError
from iterrefine.item.model import (
    DEFAULT_MAX_ENVELOPE_BYTES,
    DEFAULT_MAX_RAW_BYTES,
    Item,
    Source,
    decode_item,
)
from iterrefine.item.records import item_from_raw


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
    """A stage ready to run: where it reads, what it may write, and its handler.

    ``outputs`` are the logical topics the handler may write (the DLQ is always
    allowed); an output to any other topic is dead-lettered with the reason
    ``undeclared_output_topic``. ``waits`` says how the handler runs: ``True`` for
    an ``async def`` handler (a task per message), ``False`` for a plain function
    (inline, a fetched batch per task). It is declared, never guessed: a lambda or
    ``functools.partial`` around a coroutine function looks like a plain function.
    """

    name: str
    input_topic: str  # logical
    handler: Handler | InlineHandler
    decode: Decoder = decode_envelope
    outputs: tuple[str, ...] = field(default=(), kw_only=True)
    waits: bool = field(default=True, kw_only=True)
    #: While this returns True the runner takes no new messages, keeping its group
    #: membership as with a full window (set when an LLM role the stage calls is down).
    hold: Callable[[], bool] | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if not self.outputs:
            raise ConfigError(
                f"stage {self.name!r} declares no output topics: pass outputs=(...) with every "
                "logical topic its handler may write (e.g. ('items.curated',))"
            )
        object.__setattr__(self, "outputs", tuple(self.outputs))

    @property
    def inline(self) -> bool:
        """The handler never waits: the runtime runs it inline (see the module docstring)."""
        return not self.waits
