"""The topic set (ARCHITECTURE.md "Shape") and its idempotent creation."""

from __future__ import annotations

import contextlib

from aiokafka.admin import NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from iterrefine.config import KafkaConfig
from iterrefine.kafka import make_admin

#: Logical names, in pipeline order. Full names carry the configured prefix.
LOGICAL_TOPICS = (
    "items.raw",
    "items.scored",
    "items.refine",
    "items.review",
    "items.align",
    "items.curated",
    "items.rejected",
    "items.dlq",
)
TERMINAL_TOPICS = ("items.curated", "items.rejected", "items.dlq")


class TopicNames:
    """Maps logical topic names (``items.raw``) to full ones (``iterrefine.items.raw``)."""

    def __init__(self, prefix: str = "iterrefine.") -> None:
        self.prefix = prefix
        self._full = {name: prefix + name for name in LOGICAL_TOPICS}

    def __getitem__(self, logical: str) -> str:
        return self._full[logical]

    def logical(self, full: str) -> str:
        return full.removeprefix(self.prefix)

    def all(self) -> list[str]:
        return list(self._full.values())

    def terminal(self) -> list[str]:
        return [self._full[name] for name in TERMINAL_TOPICS]


async def ensure_topics(config: KafkaConfig, bootstrap_servers: str) -> list[str]:
    """Create whichever topics of the set are missing; return the ones created."""
    names = TopicNames(config.topic_prefix)
    admin = make_admin(config, bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in names.all() if t not in existing]
        if missing:
            # Another worker may create them between our list and create: that is fine.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [NewTopic(t, config.partitions, config.replication_factor) for t in missing]
                )
        return missing
    finally:
        await admin.close()
