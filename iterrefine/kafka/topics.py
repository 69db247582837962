"""Topic names, and their idempotent creation.

The topic *set* is not listed here: it is derived from the stage graph
(:meth:`iterrefine.graph.spec.StageGraph.topics`). This module knows only the topics the
mechanisms themselves use: ingest writes ``items.raw``, export and the watcher read
the terminal topics, and every stage may dead-letter to ``items.dlq``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from aiokafka.admin import NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from iterrefine.config import KafkaConfig
from iterrefine.kafka.clients import make_admin

INGEST_TOPIC = "items.raw"
DLQ_TOPIC = "items.dlq"
#: Where every item ends, exactly once as seen by the exporter.
TERMINAL_TOPICS = ("items.curated", "items.rejected", DLQ_TOPIC)
#: What ingest, export and dead-lettering need, whatever the stages are.
CORE_TOPICS = (INGEST_TOPIC, *TERMINAL_TOPICS)


class TopicNames:
    """Maps logical topic names (``items.raw``) to full ones (``iterrefine.items.raw``)."""

    def __init__(self, prefix: str = "iterrefine.") -> None:
        self.prefix = prefix

    def __getitem__(self, logical: str) -> str:
        return self.prefix + logical

    def logical(self, full: str) -> str:
        return full.removeprefix(self.prefix)

    def full(self, logical: Iterable[str]) -> list[str]:
        return [self.prefix + name for name in logical]

    def terminal(self) -> list[str]:
        return self.full(TERMINAL_TOPICS)


async def ensure_topics(
    config: KafkaConfig, bootstrap_servers: str, topics: Iterable[str] = ()
) -> list[str]:
    """Create whichever of ``topics`` (logical) and the core topics are missing.

    Returns the full names created. Stage processes pass their graph's topics
    (:meth:`iterrefine.graph.spec.StageGraph.topics`).
    """
    wanted = TopicNames(config.topic_prefix).full(dict.fromkeys((*CORE_TOPICS, *topics)))
    admin = make_admin(config, bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if missing:
            # Another worker may create them between our list and create: that is fine.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [NewTopic(t, config.partitions, config.replication_factor) for t in missing]
                )
        return missing
    finally:
        await admin.close()
