"""One item's story: its exported row (or terminal record), read back for people.

``iterrefine show`` and ``iterrefine view`` read the same thing: the rows of an
export in the ``full`` shape (JSON lines or Parquet, with the rejected and DLQ
files beside it), or the terminal topics themselves (newest revision per id,
as the exporter chooses). A :class:`Story` is one such row with the item's
typed state decoded, plus the few derived numbers the viewer filters on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from iterrefine.config import Config
from iterrefine.errors import ConfigError
from iterrefine.io.export import Outcome, Selection, outcome_of_topic, terminal_of
from iterrefine.io.outputs import output_paths, read_rows, shaped_row
from iterrefine.item.model import Item


@dataclass(frozen=True)
class Story:
    """An item's exported row: typed ``item`` for curated/rejected, ``None`` for dead letters."""

    id: str
    outcome: Outcome
    row: dict[str, Any]
    item: Item | None

    @property
    def status(self) -> str:
        return self.item.status if self.item is not None else "dlq"

    @property
    def rounds(self) -> int:
        return len(self.item.rounds) if self.item is not None else 0

    @property
    def cluster(self) -> Any:
        """The item's cluster, once a selection stage assigned one (else None)."""
        state = self.row.get("item")
        return state.get("cluster") if isinstance(state, dict) else None

    @property
    def score_before(self) -> float | None:
        judgement = self.item.judgement if self.item is not None else None
        return judgement.scores.mean if judgement and judgement.scores else None

    @property
    def score_after(self) -> float | None:
        judgement = self.item.final_judgement if self.item is not None else None
        return judgement.scores.mean if judgement and judgement.scores else None

    @property
    def score_change(self) -> float | None:
        before, after = self.score_before, self.score_after
        return None if before is None or after is None else round(after - before, 3)

    @property
    def reason(self) -> str:
        """Why it did not make it as is (rejected, dropped, dead letter), else ''."""
        return str(self.row.get("reason") or (self.item.status_reason if self.item else ""))


def story_of_row(row: dict[str, Any], outcome: Outcome) -> Story:
    state = row.get("item")
    if isinstance(state, dict):
        item = msgspec.convert(state, Item)
        return Story(id=item.id, outcome=outcome, row=row, item=item)
    if outcome != "dlq" and "instruction" in row:
        raise ConfigError("this export has no lineage (a training-ready shape); export with "
                          "--shape full to show or view items")
    return Story(id=str(row.get("id", "")), outcome="dlq", row=row, item=None)


def _outcome_of_file(path: Path) -> Outcome:
    name = path.name
    if ".dlq." in name:
        return "dlq"
    return "rejected" if ".rejected." in name else "curated"


def stories_from_export(path: Path) -> Iterator[Story]:
    """The rows of ``path`` and of the rejected/DLQ files beside it (when it is the main one)."""
    if not path.exists():
        raise ConfigError(f"export file {path} does not exist")
    files = [path]
    if _outcome_of_file(path) == "curated":
        siblings = output_paths(path)
        files += [p for p in (siblings.rejected, siblings.dlq) if p.exists()]
    for file in files:
        outcome = _outcome_of_file(file)
        for row in read_rows(file):
            yield story_of_row(row, outcome)


def stories_from_selection(selection: Selection) -> Iterator[Story]:
    for terminal in selection.by_id.values():
        row = terminal.row() if terminal.item is None else shaped_row(terminal, "full")
        yield story_of_row(row, terminal.outcome)


async def terminal_selection(config: Config, bootstrap: str) -> Selection:
    """The terminal topics read to their end: the newest revision per item id."""
    from iterrefine.kafka.clients import read_to_end
    from iterrefine.kafka.topics import TopicNames

    names = TopicNames(config.kafka.topic_prefix)
    records = await read_to_end(config.kafka, bootstrap, names.terminal())
    selection = Selection()
    for record in sorted(records, key=lambda r: r.timestamp):
        selection.offer(terminal_of(record, outcome_of_topic(names, record.topic)))
    return selection


def find_story(stories: Iterable[Story], item_id: str) -> Story:
    """The story with ``item_id``, or the only one whose id starts with it."""
    matches = []
    for story in stories:
        if story.id == item_id:
            return story
        if story.id.startswith(item_id):
            matches.append(story)
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ConfigError(f"{len(matches)} items start with {item_id!r}: "
                          f"{', '.join(s.id for s in matches[:5])}; give more of the id")
    raise ConfigError(f"no item {item_id!r} in the export or terminal topics")
