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

import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from iterrefine.errors import ConfigError, StageContractError
from iterrefine.item.model import (
    DEFAULT_MAX_ENVELOPE_BYTES,
    DEFAULT_MAX_RAW_BYTES,
    Item,
    Source,
    decode_item,
)
from iterrefine.item.records import item_from_raw
from iterrefine.kafka.topics import DLQ_TOPIC, INGEST_TOPIC


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
    defaults to the topic's last part (``curated``). ``partition_by`` sends the message
    to partition ``partition_by % partitions`` of its topic instead of the input's
    partition number, so that every message with the same value has one consumer (the
    online quota: one owner per cluster).
    """

    topic: str
    item: Item
    outcome: str | None = None
    partition_by: int | None = None

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


def decoder_for(topic: str) -> Decoder:
    """How a record of ``topic`` becomes an item: the topic decides, never the stage.

    ``items.raw`` holds records as a data pipeline wrote them (validated into a fresh
    item); every other topic holds whole item envelopes. So a stage placed in front of
    ``score`` gets raw records decoded without knowing it.
    """
    return decode_raw_record if topic == INGEST_TOPIC else decode_envelope


@runtime_checkable
class StatefulHandler(Protocol):
    """An inline handler whose decisions depend on the items it handled before (the online
    selection's per-cluster ranks). Kafka moves partitions between workers, and a worker
    restarts: before it takes a partition's new records, the runner rebuilds the state
    from every assigned partition's records up to their committed offsets (:meth:`replay`
    after :meth:`reset_state`), so a new owner decides as the old one would have."""

    def __call__(self, item: Item) -> Sequence[Output]: ...

    def reset_state(self) -> None:
        """Forget every item handled so far."""

    def replay(self, item: Item) -> None:
        """Take ``item`` (handled before, by this worker or another) into the state,
        producing nothing."""


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
    #: None: the input topic's decoder (:func:`decoder_for`).
    decode: Decoder | None = None
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
        if self.decode is None:
            object.__setattr__(self, "decode", decoder_for(self.input_topic))

    @property
    def decoder(self) -> Decoder:
        """The decoder in use (set from the input topic when none was given)."""
        assert self.decode is not None  # filled in by __post_init__
        return self.decode

    @property
    def stateful(self) -> StatefulHandler | None:
        """The handler, when its state is rebuilt on assignment (:class:`StatefulHandler`)."""
        handler = self.handler
        return handler if self.inline and isinstance(handler, StatefulHandler) else None

    @property
    def inline(self) -> bool:
        """The handler never waits: the runtime runs it inline (see the module docstring)."""
        return not self.waits

    def checked(self, result: object) -> Sequence[Output]:
        """``result`` if it is a list of outputs to declared topics; else StageContractError.

        The one contract check, used by the runner and by the in-process test kit.
        """
        if inspect.iscoroutine(result):
            result.close()  # never awaited: closing it avoids a "never awaited" warning
            raise StageContractError(
                f"the {self.name} handler returned a coroutine, but the stage is declared "
                "waits=False: declare it waits=True", reason="handler_returned_coroutine")
        if not isinstance(result, list | tuple):
            raise StageContractError(
                f"the {self.name} handler returned {type(result).__name__}, not a list of "
                "Output", reason="bad_handler_result")
        for out in result:
            if not isinstance(out, Output) or not isinstance(out.item, Item):
                raise StageContractError(
                    f"the {self.name} handler returned {out!r:.200}, not an Output of an Item",
                    reason="bad_handler_result")
            if out.topic not in self.outputs and out.topic != DLQ_TOPIC:
                raise StageContractError(
                    f"the {self.name} handler wrote to {out.topic!r}, which the stage does not "
                    f"declare (outputs: {', '.join(self.outputs)})",
                    reason="undeclared_output_topic")
        return result
