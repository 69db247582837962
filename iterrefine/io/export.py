"""Export: the terminal topics as files, one row per item id.

At-least-once delivery can put the same item in a terminal topic twice, and a
replay writes a newer revision of it. The exporter keeps, per item id, the
record with the newest revision; among records of that revision, the first one
written (so the choice is stable from one export to the next).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec

from iterrefine.errors import ValidationError
from iterrefine.item.model import Item, decode_item, record_of
from iterrefine.kafka.topics import TopicNames
from iterrefine.runtime.dlq import headers_dict
from iterrefine.runtime.stage import RecordLike

Outcome = Literal["curated", "rejected", "dlq"]


@dataclass(frozen=True, slots=True)
class Terminal:
    """One item's final record in a terminal topic."""

    id: str
    outcome: Outcome
    revision: int
    timestamp_ms: int
    item: Item | None  # None for dead letters
    meta: dict[str, str]  # dead-letter headers
    raw: bytes

    def row(self) -> dict[str, Any]:
        if self.item is not None:
            return record_of(self.item)
        row: dict[str, Any] = {
            "id": self.id,
            "reason": self.meta.get("reason", "unknown"),
            "stage": self.meta.get("stage", ""),
            "error": self.meta.get("error", ""),
            "message": self.meta.get("message", ""),
            "source": self.meta.get("source", ""),
            "origin": self.meta.get("ingest.origin", ""),
            "line": self.meta.get("ingest.line", ""),
        }
        if "raw_answer" in self.meta:  # an unreadable model answer: the text itself
            row["task"] = self.meta.get("task", "")
            row["raw_answer"] = self.meta["raw_answer"]
        try:
            row["original"] = self.raw.decode("utf-8")
        except UnicodeDecodeError:
            row["original_base64"] = base64.b64encode(self.raw).decode()
        return row


def terminal_of(record: RecordLike, outcome: Outcome) -> Terminal:
    value = record.value or b""
    # Anyone can write to these topics: a binary key or a garbled header is shown, not fatal.
    key = (record.key or b"").decode("utf-8", "replace")
    if outcome == "dlq":
        meta = headers_dict(record.headers or ())
        revision = _int_or_zero(meta.get("revision", "0"))
        return Terminal(id=key, outcome=outcome, revision=revision,
                        timestamp_ms=record.timestamp, item=None, meta=meta, raw=value)
    try:
        item = decode_item(value)
    except ValidationError as exc:  # someone else wrote to our topic: keep it visible
        meta = {"reason": exc.reason, "message": str(exc), "stage": "export"}
        return Terminal(id=key, outcome="dlq", revision=0,
                        timestamp_ms=record.timestamp, item=None, meta=meta, raw=value)
    return Terminal(id=item.id, outcome=outcome, revision=item.revision,
                    timestamp_ms=record.timestamp, item=item, meta={}, raw=value)


def _int_or_zero(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


class Selection:
    """The newest revision per item id, first-written among equals."""

    def __init__(self) -> None:
        self.by_id: dict[str, Terminal] = {}
        #: Records not taken or replaced: ``superseded`` ones plus at-least-once repeats.
        self.duplicates = 0
        #: Of ``duplicates``, those of another revision than the id's other record.
        self.superseded = 0

    def offer(self, terminal: Terminal) -> bool:
        """Take ``terminal`` if it wins; True if its id was not seen before."""
        current = self.by_id.get(terminal.id)
        if current is None:
            self.by_id[terminal.id] = terminal
            return True
        self.duplicates += 1
        if terminal.revision != current.revision:
            self.superseded += 1
        newer = terminal.revision > current.revision
        same_but_earlier = (
            terminal.revision == current.revision and terminal.timestamp_ms < current.timestamp_ms
        )
        if newer or same_but_earlier:
            self.by_id[terminal.id] = terminal
        return False

    def outcome_counts(self) -> dict[str, int]:
        counts = {"curated": 0, "rejected": 0, "dlq": 0}
        for terminal in self.by_id.values():
            counts[terminal.outcome] += 1
        return counts


def outcome_of_topic(names: TopicNames, topic: str) -> Outcome:
    logical = names.logical(topic)
    outcome = logical.removeprefix("items.")
    if outcome not in ("curated", "rejected", "dlq"):
        raise ValueError(f"{topic} is not a terminal topic")
    return outcome  # type: ignore[return-value]


@dataclass(frozen=True)
class ExportPaths:
    curated: Path
    rejected: Path
    dlq: Path

    @classmethod
    def beside(cls, output: Path) -> ExportPaths:
        """``out.jsonl`` → ``out.jsonl``, ``out.rejected.jsonl``, ``out.dlq.jsonl``."""
        stem = output.name.removesuffix(".jsonl").removesuffix(".json")
        return cls(
            curated=output,
            rejected=output.with_name(f"{stem}.rejected.jsonl"),
            dlq=output.with_name(f"{stem}.dlq.jsonl"),
        )


_row_encoder = msgspec.json.Encoder()


def write_export(
    terminals: Iterable[Terminal], paths: ExportPaths, *, only_ids: Iterable[str] | None = None
) -> dict[str, int]:
    """Write one JSON line per item into the file of its outcome; return the counts."""
    wanted = set(only_ids) if only_ids is not None else None
    paths.curated.parent.mkdir(parents=True, exist_ok=True)
    counts = {"curated": 0, "rejected": 0, "dlq": 0}
    files = {
        "curated": paths.curated.open("wb"),
        "rejected": paths.rejected.open("wb"),
        "dlq": paths.dlq.open("wb"),
    }
    try:
        for terminal in terminals:
            if wanted is not None and terminal.id not in wanted:
                continue
            files[terminal.outcome].write(_row_encoder.encode(terminal.row()) + b"\n")
            counts[terminal.outcome] += 1
    finally:
        for handle in files.values():
            handle.close()
    return counts


def load_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of an exported file (for tests and tools).

    Rows end at ``\n`` only: ``str.splitlines`` would also split inside a text holding
    U+2028, U+2029 or U+0085, which the JSON encoder writes as they are.
    """
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line.strip()]
