"""What the exact selection sends between processes: signals in, decisions out.

``items.selection-signals``: the score stage's record of each stage-1 survivor (its
judge level, difficulty and embedding vector), keyed by item id, for the one process
that decides (``iterrefine run``'s :class:`~iterrefine.selection.barrier.ExactSelection`).
``items.selection-decisions`` (one partition): that process's decision per item, then
an :class:`End` record; every route worker reads it before it routes anything. Both
carry the run's id, so records a previous run left on the same topics are ignored.
"""

from __future__ import annotations

import contextlib
from typing import Final

import msgspec
import structlog
from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from iterrefine.config import KafkaConfig
from iterrefine.kafka.clients import make_admin

log = structlog.get_logger("iterrefine.selection")

SIGNALS_TOPIC: Final = "items.selection-signals"
DECISIONS_TOPIC: Final = "items.selection-decisions"
#: A 4096-dimension float32 vector is 16 KiB; leave room for the rest.
MAX_SIGNAL_BYTES: Final = 1024 * 1024


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


async def ensure_topic(kafka: KafkaConfig, bootstrap: str, logical: str, partitions: int) -> str:
    """Create ``logical`` (under the prefix) if missing; its full name."""
    name = kafka.topic_prefix + logical
    admin = make_admin(kafka, bootstrap)
    await admin.start()
    try:
        if name in set(await admin.list_topics()):
            return name
        configs = {"max.message.bytes": str(MAX_SIGNAL_BYTES)}
        with contextlib.suppress(TopicAlreadyExistsError):
            try:
                await admin.create_topics([NewTopic(name, partitions, kafka.replication_factor,
                                                    topic_configs=configs)])
            except KafkaError as exc:  # a broker without these configs: plain topic
                log.warning("selection_topic_plain", topic=name, error=repr(exc))
                await admin.create_topics(
                    [NewTopic(name, partitions, kafka.replication_factor)])
        return name
    finally:
        await admin.close()
