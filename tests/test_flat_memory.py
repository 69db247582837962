"""Per-item state `iterrefine run` keeps for the whole input stays small per item."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import msgspec
import pytest

from iterrefine.io._duplicates import FirstWins, bytes_fingerprint
from iterrefine.io._idtable import IntTable
from iterrefine.io.export import ExportPaths, Terminal
from iterrefine.io.stream_export import StreamingExport
from iterrefine.item.records import item_from_raw

pytestmark = pytest.mark.unit

ORIGIN = "/data/a-long-directory-name/instructions-2026-11-28.jsonl"


def test_first_wins_takes_under_80_bytes_per_id() -> None:
    """100,000 remembered ids (what a 100k-record input leaves) fit in 8 MB."""
    first_wins = FirstWins()
    tracemalloc.start()
    try:
        for i in range(100_000):
            assert first_wins.check(f"item-{i:07d}", bytes_fingerprint(b"%d" % i), ORIGIN,
                                    i + 1) is None
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 8_000_000


def test_packed_entries_still_say_where_the_first_record_was() -> None:
    """A repeat names the first record's file and line; content decides the reason."""
    first_wins = FirstWins()
    assert first_wins.check("a", bytes_fingerprint(b"x"), ORIGIN, 7) is None
    assert first_wins.check("b", bytes_fingerprint(b"y"), "other.jsonl", 2**35) is None
    repeat = first_wins.check("a", bytes_fingerprint(b"x"), "other.jsonl", 9)
    conflict = first_wins.check("b", bytes_fingerprint(b"z"), ORIGIN, 10)
    assert repeat is not None and repeat.reason == "duplicate_record"
    assert f"at {ORIGIN}:7;" in repeat.message and repeat.row_id == "a#dup@other.jsonl:9"
    assert conflict is not None and conflict.reason == "duplicate_id"
    assert f"at other.jsonl:{2**35} " in conflict.message
    assert "a" in first_wins and "c" not in first_wins
    assert (first_wins.duplicate_records, first_wins.duplicate_ids) == (1, 1)


def test_int_table_keeps_every_row_through_many_resizes() -> None:
    """50,000 keys (negative, zero, huge) keep their rows as the table grows and updates."""
    table = IntTable(width=2)
    keys = [hash(f"k{i}") for i in range(50_000)] + [0, -(2**63), 2**63 - 1]
    for n, key in enumerate(keys):
        table.put(key, n, -n)
    assert len(table) == len(keys)
    assert all(table.row(key) == (n, -n) for n, key in enumerate(keys))
    table.put(keys[7], 70, 71)
    assert table.get(keys[7]) == 70 and table.get(keys[7], 1) == 71
    assert len(table) == len(keys)
    assert hash("absent") not in table and table.row(hash("absent")) is None
    assert table.get(hash("absent")) is None and 0 in table


def test_int_table_refuses_a_row_of_the_wrong_width() -> None:
    """A row must have exactly `width` values: a short one is an error, not a silent pad."""
    table = IntTable(width=2)
    with pytest.raises(ValueError, match="expected 2 values"):
        table.put(5, 1)
    with pytest.raises(ValueError):
        IntTable(width=0)


def _curated(item_id: str, revision: int, timestamp_ms: int) -> Terminal:
    raw = json.dumps({"id": item_id, "instruction": "i", "output": "o"}).encode()
    item = msgspec.structs.replace(item_from_raw(raw), revision=revision)
    return Terminal(id=item_id, outcome="curated", revision=revision,
                    timestamp_ms=timestamp_ms, item=item, meta={}, raw=b"")


def test_export_state_takes_a_garbled_revision_and_still_prefers_newer(tmp_path: Path) -> None:
    """A dead letter whose revision header is a huge number fits the 64-bit state; a newer
    revision of an item still replaces the row written for the older one."""
    export = StreamingExport(ExportPaths.beside(tmp_path / "out.jsonl"))
    for item_id in ("a", "b"):
        export.expect(item_id)
    garbled = Terminal(id="b", outcome="dlq", revision=1_795_861_459_001,
                       timestamp_ms=1_795_861_462_060, item=None, meta={"reason": "x"}, raw=b"{}")
    assert export.offer(_curated("a", 0, 100)) and export.offer(garbled)
    assert not export.offer(_curated("a", 1, 200))  # written at finish, over revision 0
    assert export.finish() == {"curated": 1, "rejected": 0, "dlq": 1}
    (row,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert row["item"]["revision"] == 1
