"""The records the runner's parts hand each other: a message to produce, and a sent input.

Named fields instead of positional tuples: each record is read in several modules
(handling builds it, delivery sends it, the ack group and the outcome counts read it).
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from aiokafka import ConsumerRecord


class Outgoing(msgspec.Struct, frozen=True, kw_only=True):
    """One message to produce: an output of a handler, or a dead letter."""

    #: The full topic name (prefix included).
    topic: str
    key: bytes
    value: bytes
    #: Kafka headers (dead letters carry theirs); None for plain outputs.
    headers: list[tuple[str, bytes]] | None = None
    #: The label of ``iterrefine_items_total`` this message counts under once delivered.
    outcome: str
    #: Partition ``partition_by % partitions`` instead of the input's (``Output``).
    partition_by: int | None = None


class Sent(msgspec.Struct, frozen=True, kw_only=True):
    """One input whose outputs were handed to the producer, and the futures of their acks."""

    record: ConsumerRecord
    outgoing: list[Outgoing]
    acks: list[asyncio.Future[Any]]
