"""How far a pipeline is, counted in items: ingested, finished, duplicates, and where the
unfinished ones are.

Delivery is at-least-once, so a terminal topic can hold an item twice (a worker killed
after producing but before committing redoes its work), and a replay adds a newer
revision of an item. Counting records would call those extra items: 1,019 "items" for
900 ingested after one SIGKILL. Here an item is an id: the ids ingested are the keys of
``items.raw``; an item is finished once its id is in a terminal topic; the records
beyond one per id are *duplicates* (same revision again) or *superseded* (an older
revision than the newest). An unfinished item is placed in the topic where its id was
last written, so "where they are" names the stage that holds them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec

from iterrefine.config import KafkaConfig
from iterrefine.io.export import Selection, outcome_of_topic, terminal_of
from iterrefine.kafka.clients import read_to_end
from iterrefine.kafka.topics import INGEST_TOPIC, TERMINAL_TOPICS, TopicNames

#: Ids named in a message at most (the rest are counted).
SHOWN_IDS = 5


class Completeness(msgspec.Struct, frozen=True, kw_only=True):
    """The pipeline in items (distinct ids), not records."""

    #: Distinct ids in ``items.raw``: the items the pipeline was asked to finish.
    ingested: int
    #: Of those, how many have reached a terminal topic.
    finished: int
    #: Distinct ids per terminal topic (logical name → count), by each id's newest record.
    items: dict[str, int]
    #: Records per terminal topic, duplicates included.
    records: dict[str, int]
    #: Terminal records that repeat an id at the same revision (at-least-once redelivery).
    duplicates: int
    #: Terminal records of an older revision than the id's newest (replays).
    superseded: int
    #: Ingested ids not yet in a terminal topic.
    missing: int
    #: Where the missing ids were last written (logical topic → count).
    missing_where: dict[str, int] = {}
    #: A few of the missing ids, for a look with ``iterrefine show``.
    missing_examples: list[str] = []

    @property
    def complete(self) -> bool:
        return self.missing == 0

    def describe_missing(self) -> str:
        """One line: how many are missing, where they are, and what to do."""
        where = ", ".join(f"{n} in {topic}" for topic, n in self.missing_where.items())
        return (f"{self.missing} of {self.ingested} ingested items have not reached a terminal "
                f"topic yet ({where}; e.g. {', '.join(self.missing_examples)}): the stage "
                "workers of those topics are behind or not running (iterrefine status shows "
                "their lag)")


@dataclass
class _LastSeen:
    """Per id: the topic of its newest record among the non-terminal topics."""

    where: dict[str, tuple[int, str]] = field(default_factory=dict)

    def offer(self, item_id: str, timestamp_ms: int, topic: str) -> None:
        seen = self.where.get(item_id)
        if seen is None or timestamp_ms >= seen[0]:
            self.where[item_id] = (timestamp_ms, topic)


async def pipeline_completeness(
    config: KafkaConfig, bootstrap: str, stage_topics: Iterable[str] = (),
) -> Completeness:
    """Read the pipeline's topics and count it in items.

    ``stage_topics``: the logical topics between ingest and the terminal topics (the
    graph's), where unfinished items are looked for.
    """
    return (await read_pipeline(config, bootstrap, stage_topics))[1]


async def read_pipeline(
    config: KafkaConfig, bootstrap: str, stage_topics: Iterable[str] = (),
) -> tuple[Selection, Completeness]:
    """The newest terminal record per id (what ``export`` writes), and the counts."""
    names = TopicNames(config.topic_prefix)
    selection = Selection()
    records = dict.fromkeys(TERMINAL_TOPICS, 0)
    terminal = await read_to_end(config, bootstrap, names.terminal())
    # In time order: among records of one revision the first written wins, stably.
    for record in sorted(terminal, key=lambda r: r.timestamp):
        outcome = outcome_of_topic(names, record.topic)
        records[f"items.{outcome}"] += 1
        selection.offer(terminal_of(record, outcome))
    middle = [t for t in dict.fromkeys(stage_topics)
              if t != INGEST_TOPIC and t not in TERMINAL_TOPICS]
    last = _LastSeen()
    ingested: set[str] = set()
    for record in await read_to_end(config, bootstrap, names.full([INGEST_TOPIC, *middle])):
        item_id = (record.key or b"").decode("utf-8", "replace")
        logical = names.logical(record.topic)
        if logical == INGEST_TOPIC:
            ingested.add(item_id)
        if item_id not in selection.by_id:
            last.offer(item_id, record.timestamp, logical)
    return selection, _count(selection, records, ingested, last)


def _count(selection: Selection, records: dict[str, int], ingested: set[str],
           last: _LastSeen) -> Completeness:
    items = dict.fromkeys(TERMINAL_TOPICS, 0)
    for terminal in selection.by_id.values():
        items[f"items.{terminal.outcome}"] += 1
    missing = sorted(ingested - selection.by_id.keys())
    where: dict[str, int] = {}
    for item_id in missing:
        topic = last.where.get(item_id, (0, INGEST_TOPIC))[1]
        where[topic] = where.get(topic, 0) + 1
    return Completeness(
        ingested=len(ingested), finished=len(ingested) - len(missing), items=items,
        records=records, duplicates=selection.duplicates - selection.superseded,
        superseded=selection.superseded, missing=len(missing),
        missing_where=dict(sorted(where.items(), key=lambda kv: -kv[1])),
        missing_examples=missing[:SHOWN_IDS])

