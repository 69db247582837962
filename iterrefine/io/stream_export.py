"""Export while the run goes: each item's row is written when it reaches a terminal topic.

``iterrefine run`` used to keep every terminal item in memory and write the files at
the end; for a large input that costs memory in proportion to the input. Here a row
is written as soon as its item arrives, and per item id only a compact record stays
(a 64-bit hash of the id → revision and timestamp, in an
:class:`~iterrefine.io._idtable.IntTable`: ~8 MB for 200,000 ids), so memory stays small.

The choice per id is the exporter's (:class:`iterrefine.io.export.Selection`): the newest
revision, first-written among equals. At-least-once delivery makes a later record of
an id that was already written rare but possible: its winner is kept aside, and
:meth:`StreamingExport.finish` rewrites the files without the superseded rows (a
streaming pass, only when that happened). Rows are written to ``FILE.partial`` and
renamed into place by ``finish``, so a crashed run leaves no half file under the
final name.

Rows come out in **input order**: each id's place in the input is remembered beside its
state (:meth:`StreamingExport.expect` is called in ingest order), and each written line's
place and file offset are kept (16 bytes a row). Items finish out of order (a kept item
leaves after one call, a refined one after a dozen), so ``finish`` rewrites each file in
input order, reading the lines back by offset: one more sequential write and a sorted
index (about 36 bytes a row, while it lasts), skipped when a file is in order already.
"""

from __future__ import annotations

import itertools
import os
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import msgspec

from iterrefine.io._idtable import IntTable
from iterrefine.io.export import ExportPaths, Outcome, Terminal
from iterrefine.io.outputs import export_row
from iterrefine.item.model import Item

_OUTCOMES: tuple[Outcome, ...] = ("curated", "rejected", "dlq")
#: ``_state`` value of an id that was ingested but has not arrived yet.
_PENDING = -1
_MAX_REVISION = 2**14
_row_encoder = msgspec.json.Encoder()


class _Row(msgspec.Struct):
    """What the summary needs back from an exported row (other fields are skipped)."""

    id: str
    item: Item | None = None
    reason: str = "unknown"


_row_decoder = msgspec.json.Decoder(_Row)


def _key(item_id: str) -> int:
    # 64 bits: a collision among 10⁶ ids has odds of about 1 in 10⁷.
    return hash(item_id)


def _ascending(values: array[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(values))


def _rank(terminal: Terminal) -> int:
    """Larger wins: newer revision first, then the earlier timestamp (first written).

    Kept in 64 bits (the table's width). Revisions from 2¹⁴ up, which only a foreign
    or garbled record carries (a DLQ header read as a number), all rank alike.
    """
    rank = (min(max(terminal.revision, 0), _MAX_REVISION) << 48) - terminal.timestamp_ms
    return max(rank, -(2**63))


class StreamingExport:
    """Writes terminal items to the export files as they arrive, one row per expected id."""

    def __init__(self, paths: ExportPaths) -> None:
        self.paths = paths
        self._final: dict[str, Path] = {
            "curated": paths.curated, "rejected": paths.rejected, "dlq": paths.dlq}
        self._partial = {k: v.with_name(v.name + ".partial") for k, v in self._final.items()}
        paths.curated.parent.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, IO[bytes]] = {k: p.open("wb") for k, p in self._partial.items()}
        #: id hash → (rank of the written record or _PENDING, the id's place in the input).
        self._state = IntTable(width=2)
        #: Per file: each written line's place in the input, and its offset (+ the end).
        self._places: dict[str, array[int]] = {k: array("q") for k in _OUTCOMES}
        self._offsets: dict[str, array[int]] = {k: array("q", [0]) for k in _OUTCOMES}
        #: Winners that arrived after a loser of theirs was written (rare).
        self._replaced: dict[str, Terminal] = {}
        self.expected = 0
        self.arrived = 0
        self.duplicates = 0
        self.counts: dict[str, int] = dict.fromkeys(_OUTCOMES, 0)

    def expect(self, item_id: str) -> None:
        """``item_id`` was ingested by this run: export it when it arrives."""
        key = _key(item_id)
        if key not in self._state:
            self._state.put(key, _PENDING, self.expected)
            self.expected += 1

    @property
    def complete(self) -> bool:
        return self.arrived >= self.expected

    def is_pending(self, item_id: str) -> bool:
        """``item_id`` was ingested by this run and has not reached a terminal topic yet."""
        return self._state.get(_key(item_id)) == _PENDING

    def offer(self, terminal: Terminal) -> bool:
        """Write ``terminal`` if it is the first of an expected id; True if so."""
        key = _key(terminal.id)
        state = self._state.row(key)
        if state is None:
            return False  # not ingested by this run (another producer shares the topics)
        current, place = state
        rank = _rank(terminal)
        if current == _PENDING:
            self._state.put(key, rank, place)
            line = _row_encoder.encode(export_row(terminal)) + b"\n"
            self._files[terminal.outcome].write(line)
            offsets = self._offsets[terminal.outcome]
            offsets.append(offsets[-1] + len(line))
            self._places[terminal.outcome].append(place)
            self.counts[terminal.outcome] += 1
            self.arrived += 1
            return True
        self.duplicates += 1
        if rank > current:
            self._state.put(key, rank, place)
            self._replaced[terminal.id] = terminal
        return False

    def finish(self) -> dict[str, int]:
        """Close the files, put their rows in input order (dropping superseded ones) and
        move them into place; the counts."""
        for handle in self._files.values():
            handle.close()
        replaced = self._replacements()
        superseded = {place for place, _ in replaced}
        for outcome, partial in self._partial.items():
            places = self._places[outcome]
            mine = [(p, t) for p, t in replaced if t.outcome == outcome]
            if mine or superseded or not _ascending(places):
                self._write_in_order(outcome, partial, superseded, mine)
            os.replace(partial, self._final[outcome])
        return dict(self.counts)

    def _replacements(self) -> list[tuple[int, Terminal]]:
        """The late winners with their ids' places in the input, in input order."""
        found = []
        for item_id, terminal in self._replaced.items():
            place = self._state.get(_key(item_id), 1)
            assert place is not None, "a replaced id was expected"
            found.append((place, terminal))
        return sorted(found, key=lambda pair: pair[0])

    def _write_in_order(self, outcome: str, partial: Path, superseded: set[int],
                        replaced: list[tuple[int, Terminal]]) -> None:
        """Rewrite ``partial`` in input order: lines read back by offset, superseded ones
        left out, ``replaced`` rows put in at their places."""
        places, offsets = self._places[outcome], self._offsets[outcome]
        order = sorted(range(len(places)), key=places.__getitem__)
        late = iter(replaced)
        pending = next(late, None)
        fresh = partial.with_name(partial.name + ".tmp")
        with partial.open("rb") as src, fresh.open("wb") as dst:
            for index in order:
                place = places[index]
                while pending is not None and pending[0] < place:
                    self._write_replacement(dst, outcome, pending[1])
                    pending = next(late, None)
                if place in superseded:
                    self.counts[outcome] -= 1
                    continue
                src.seek(offsets[index])
                dst.write(src.read(offsets[index + 1] - offsets[index]))
            while pending is not None:
                self._write_replacement(dst, outcome, pending[1])
                pending = next(late, None)
        os.replace(fresh, partial)

    def _write_replacement(self, dst: IO[bytes], outcome: str, terminal: Terminal) -> None:
        dst.write(_row_encoder.encode(export_row(terminal)) + b"\n")
        self.counts[outcome] += 1

    def abort(self) -> None:
        """Close and delete the partial files (the run failed)."""
        for handle in self._files.values():
            handle.close()
        for partial in self._partial.values():
            partial.unlink(missing_ok=True)

    def terminals(self) -> Iterator[Terminal]:
        """The exported rows read back (after :meth:`finish`), for the summary."""
        for outcome in _OUTCOMES:
            path = self._final[outcome]
            if not path.exists():
                continue
            with path.open("rb") as handle:
                for line in handle:
                    row = _row_decoder.decode(line)
                    yield Terminal(id=row.id, outcome=outcome,
                                   revision=row.item.revision if row.item else 0,
                                   timestamp_ms=0, item=row.item,
                                   meta={} if row.item else {"reason": row.reason}, raw=b"")
