"""`iterrefine run` on corpora of malformed records (JSON lines, CSV, Parquet): every
record accounted for, each bad one in the DLQ with its reason and, when it has one, its id."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from iterrefine.io.export import load_rows
from iterrefine.item.records import item_from_raw

from .hostile_corpus import (
    BAD,
    CSV_ROWS,
    DUPLICATES,
    OWN_IDS,
    PARQUET_ROWS,
    corpus,
    csv_corpus,
    good_lines,
)

ROOT = Path(__file__).parent.parent


def run_corpus(
    source: Path, broker: str, tmp_path: Path
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """``iterrefine run`` on ``source`` with the simulator: exit 0, no traceback; the
    summary and the rows of each output file."""
    out = tmp_path / "out.jsonl"
    summary_path = tmp_path / "summary.json"
    done = subprocess.run(
        [sys.executable, "-m", "iterrefine.cli", "run", str(source), "-o", str(out),
         "--llm", "sim", "--sim-latency-ms", "5", "--sim-jitter-ms", "2",
         "--bootstrap", broker, "--topic-prefix", f"t{uuid.uuid4().hex[:10]}.",
         "--summary", str(summary_path), "--no-progress", "--log-level", "error",
         "--timeout-s", "120", "--data-dir", str(tmp_path / "d")],
        cwd=ROOT, capture_output=True, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert b"Traceback" not in done.stderr
    rows = {name: load_rows(out.with_name(f"out.{name}.jsonl") if name != "curated" else out)
            for name in ("curated", "rejected", "dlq")}
    return json.loads(summary_path.read_text()), rows


def test_malformed_corpus_through_run_accounts_for_every_line(
    broker: str, tmp_path: Path
) -> None:
    """curated + rejected + dlq = non-blank lines; each bad line in the DLQ with its reason."""
    data, expected = corpus()
    kinds = len(BAD) + len({reason for _, reason in DUPLICATES})
    assert kinds >= 40
    source = tmp_path / "corpus.jsonl"
    source.write_bytes(data)
    summary, rows = run_corpus(source, broker, tmp_path)

    non_blank = [line for line in data.split(b"\n") if line.strip()]
    assert len(non_blank) == len(expected)
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
    # Bad records with ids of their own are filed under them, the rest by hash.
    dlq_ids = {row["id"]: row["reason"] for row in rows["dlq"]}
    for kind, own in OWN_IDS.items():
        assert dlq_ids.get(own) == kind.split(":")[0]
    assert summary["dlq_reasons"].get("unparseable_judge_output") is None


def _outcomes(rows: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """id -> ``ok`` (curated or rejected) or its DLQ reason."""
    fates = {row["id"]: "ok" for row in rows["curated"] + rows["rejected"]}
    fates.update({row["id"]: row["reason"] for row in rows["dlq"]})
    return fates


def test_csv_corpus_through_run_files_every_row_under_its_id(
    broker: str, tmp_path: Path
) -> None:
    """Fields of 200 KB and 10 MB, shifted rows, a Latin-1 byte, fence markers: exit 0,
    each row curated/rejected or in the DLQ with its reason, under its own id."""
    source = tmp_path / "corpus.csv"
    source.write_bytes(csv_corpus())
    summary, rows = run_corpus(source, broker, tmp_path)
    assert _outcomes(rows) == {row_id: fate for row_id, _, fate in CSV_ROWS}
    assert summary["items_in"] == len(CSV_ROWS)
    shifted = next(row for row in rows["dlq"] if row["id"] == "csv-extra")
    assert shifted["original"] == "csv-extra,too,many,fields,here\r\n"


def test_parquet_corpus_through_run_files_every_row_under_its_id(
    broker: str, tmp_path: Path
) -> None:
    """Shapes mixed in one record are refused; chat, Dolly, Alpaca and fence-quoting rows
    are curated or rejected; every DLQ row carries the record's own id."""
    columns = ("id", "instruction", "input", "output", "context", "response", "messages")
    records = [{column: record.get(column) for column in columns}
               for record, _ in PARQUET_ROWS]
    source = tmp_path / "corpus.parquet"
    pq.write_table(pa.Table.from_pylist(records), source)
    summary, rows = run_corpus(source, broker, tmp_path)
    assert _outcomes(rows) == {record["id"]: fate for record, fate in PARQUET_ROWS}
    assert summary["items_in"] == len(PARQUET_ROWS)


def _physical_line_numbers(data: bytes) -> dict[int, int]:
    """Non-blank line index (1-based) → its line number in the file."""
    numbers: dict[int, int] = {}
    for physical, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            numbers[len(numbers) + 1] = physical
    return numbers
