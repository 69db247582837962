"""The duplicate-id policy of one ingest stream: the first record with an id wins.

A later record with an id already seen in the same stream is never dropped
silently and never races the first one through the pipeline (both would reach
a terminal topic, and the exporter would keep whichever had the newer
timestamp). It goes to the DLQ with the original bytes and one of two reasons:

* ``duplicate_record`` — the same id and the same content (an exact repeat);
* ``duplicate_id`` — the same id with different content (a conflict to resolve).

"Content" is the validated record (instruction, input, output, category, shape),
so ``77`` and ``"77"`` or a re-ordered JSON object count as the same record.
The memory is per stream (one ``run``, one ``ingest`` invocation): a record
ingested again by a *later* invocation is a new revision of that item, as a
replay is, and the export keeps the newest revision.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from iterrefine.model import Original, encode_original


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A record whose id was already taken: why it is refused, and what to call its row."""

    reason: str  # duplicate_record | duplicate_id
    message: str
    #: The DLQ row's id: the item's own id would make the exporter merge it with the winner.
    row_id: str


def content_fingerprint(original: Original) -> bytes:
    return bytes_fingerprint(encode_original(original))


def bytes_fingerprint(data: bytes) -> bytes:
    """16 bytes standing for ``data`` (a record is remembered by this, not kept whole)."""
    return hashlib.blake2b(data, digest_size=16).digest()


class FirstWins:
    """Remembers, per id, the first record's content fingerprint and where it was read."""

    def __init__(self) -> None:
        self._first: dict[str, tuple[bytes, str]] = {}
        self.duplicate_ids = 0
        self.duplicate_records = 0

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._first

    def check(self, item_id: str, fingerprint: bytes, where: str) -> Duplicate | None:
        """None for the first record with ``item_id`` (now remembered), else its refusal."""
        first = self._first.get(item_id)
        if first is None:
            self._first[item_id] = (fingerprint, where)
            return None
        first_fingerprint, first_where = first
        row_id = f"{item_id}#dup@{where}"
        if fingerprint == first_fingerprint:
            self.duplicate_records += 1
            return Duplicate("duplicate_record",
                             f"exact repeat of the record with id {item_id!r} at {first_where}; "
                             "the first one is processed", row_id)
        self.duplicate_ids += 1
        return Duplicate("duplicate_id",
                         f"id {item_id!r} was already used at {first_where} by a record with "
                         "different content; the first one wins, this one is not processed",
                         row_id)
