"""What the exact selection sends between processes: signals in, decisions out.

``items.selection-signals``: the score stage's record of each stage-1 survivor (its
judge level, difficulty and embedding vector), keyed by item id, for the one process
that decides (``iterrefine run``'s :class:`~iterrefine.selection.barrier.ExactSelection`).
``items.selection-decisions`` (one partition): that process's decision per item, then
an :class:`End` record; every route worker reads it before it routes anything. Both
carry the run's id, so records a previous run left on the same topics are ignored.
"""

from __future__ import annotations

from typing import Final

import msgspec
import structlog

from iterrefine.config import KafkaConfig
from iterrefine.kafka.topics import (
    SELECTION_DECISIONS_TOPIC,
    SELECTION_MAX_MESSAGE_BYTES,
    SELECTION_SIGNALS_TOPIC,
    ensure_topics,
)

log = structlog.get_logger("iterrefine.selection")

SIGNALS_TOPIC: Final = SELECTION_SIGNALS_TOPIC
DECISIONS_TOPIC: Final = SELECTION_DECISIONS_TOPIC
#: A 4096-dimension float32 vector is 16 KiB; leave room for the rest.
MAX_SIGNAL_BYTES: Final = SELECTION_MAX_MESSAGE_BYTES


class Signal(msgspec.Struct, frozen=True, kw_only=True, tag="signal"):
    run: str
    id: str
    level: int
    difficulty: float
    #: ``dim`` float32, little-endian.
    vector: bytes
    dim: int


class Decision(msgspec.Struct, frozen=True, kw_only=True, tag="decision"):
    run: str
    id: str
    cluster: int
    position: int
    size: int
    highs: int
    k: int


class End(msgspec.Struct, frozen=True, kw_only=True, tag="end"):
    """Every decision of the run precedes this record."""

    run: str
    decisions: int
    k: int
    k_configured: int
    #: Why k differs from the configured one (small input), else "".
    note: str = ""


Record = Signal | Decision | End
encode = msgspec.msgpack.Encoder().encode
_decoder = msgspec.msgpack.Decoder(Record)


def decode(data: bytes | None) -> Record | None:
    """The record, or None for bytes that are not one (logged, never fatal)."""
    try:
        return _decoder.decode(data or b"")
    except (msgspec.DecodeError, ValueError, TypeError) as exc:
        log.warning("selection_record_unreadable", error=str(exc)[:200])
        return None


async def ensure_topic(kafka: KafkaConfig, bootstrap: str, logical: str) -> str:
    """Create ``logical`` (under the prefix) if missing, checked like every pipeline
    topic (:func:`iterrefine.kafka.topics.ensure_topics`); its full name."""
    await ensure_topics(kafka, bootstrap, [logical])
    return kafka.topic_prefix + logical
