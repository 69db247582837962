"""`iterrefine run` on a corpus of 50+ malformed-record kinds: every line accounted for."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

from iterrefine.io.export import load_rows
from iterrefine.item.records import item_from_raw

from .hostile_corpus import BAD, DUPLICATES, corpus, good_lines

ROOT = Path(__file__).parent.parent


def test_malformed_corpus_through_run_accounts_for_every_line(
    broker: str, tmp_path: Path
) -> None:
    """curated + rejected + dlq = non-blank lines; each bad line in the DLQ with its reason."""
    data, expected = corpus()
    kinds = len(BAD) + len({reason for _, reason in DUPLICATES})
    assert kinds >= 40
    source = tmp_path / "corpus.jsonl"
    source.write_bytes(data)
    out = tmp_path / "out.jsonl"
    summary_path = tmp_path / "summary.json"
    done = subprocess.run(
        [sys.executable, "-m", "iterrefine.cli", "run", str(source), "-o", str(out),
         "--llm", "sim", "--sim-latency-ms", "5", "--sim-jitter-ms", "2",
         "--bootstrap", broker, "--topic-prefix", f"t{uuid.uuid4().hex[:10]}.",
         "--summary", str(summary_path), "--no-progress", "--log-level", "error",
         "--timeout-s", "120"],
        cwd=ROOT, capture_output=True, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert b"Traceback" not in done.stderr

    non_blank = [line for line in data.split(b"\n") if line.strip()]
    assert len(non_blank) == len(expected)
    summary = json.loads(summary_path.read_text())
    rows = {name: load_rows(out.with_name(f"out.{name}.jsonl") if name != "curated" else out)
            for name in ("curated", "rejected", "dlq")}
    assert len(rows["curated"]) + len(rows["rejected"]) + len(rows["dlq"]) == len(non_blank)
    assert summary["curated"] + summary["rejected"] + summary["dlq"] == len(non_blank)
    assert summary["items_in"] == len(non_blank)

    # Each bad line is in the DLQ under its own line number, with its reason and bytes.
    by_line = {int(row["line"]): row for row in rows["dlq"]}
    bad_lines = {number: reason for number, reason in enumerate(expected, start=1)
                 if reason != "ok"}
    line_numbers = _physical_line_numbers(data)
    assert {line_numbers[n]: r for n, r in bad_lines.items()} == {
        number: row["reason"] for number, row in by_line.items()}
    for row in rows["dlq"]:
        assert row["message"] and row["origin"] == "corpus.jsonl"
        assert "original" in row or "original_base64" in row
    assert Counter(row["reason"] for row in rows["dlq"]) == Counter(bad_lines.values())
    assert summary["duplicates_at_ingest"] == {"duplicate_id": 4, "duplicate_record": 3}

    # Every good line came out curated or rejected, under its normalised id.
    good_ids = {item_from_raw(line).id for line in good_lines()}
    finished = {row["id"] for row in rows["curated"] + rows["rejected"]}
    assert finished == good_ids
    assert {"77", "padded", "caf\u00e9", "first-wins"} <= finished
    winner = next(r for r in rows["curated"] + rows["rejected"] if r["id"] == "first-wins")
    assert winner["item"]["original"]["output"] == "first"
    separators = next(r for r in rows["curated"] + rows["rejected"] if r["id"] == "separators")
    original = separators["item"]["original"]["instruction"]
    assert original == "Join\u2028these\u2029lines\u0085please."


def _physical_line_numbers(data: bytes) -> dict[int, int]:
    """Non-blank line index (1-based) → its line number in the file."""
    numbers: dict[int, int] = {}
    for physical, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            numbers[len(numbers) + 1] = physical
    return numbers
