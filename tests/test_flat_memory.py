"""Per-item state `iterrefine run` keeps for the whole input stays small per item."""

from __future__ import annotations

import tracemalloc

from iterrefine.duplicates import FirstWins, bytes_fingerprint

ORIGIN = "/data/a-long-directory-name/instructions-2026-11-28.jsonl"


def test_first_wins_takes_under_150_bytes_per_id() -> None:
    """100,000 remembered ids (what a 100k-record input leaves) fit in 15 MB."""
    first_wins = FirstWins()
    tracemalloc.start()
    try:
        for i in range(100_000):
            assert first_wins.check(f"item-{i:07d}", bytes_fingerprint(b"%d" % i), ORIGIN,
                                    i + 1) is None
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 15_000_000


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
