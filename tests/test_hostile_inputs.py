"""Input readers are bounded and total: any field size, a reason per record, no guessing."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from iterrefine.errors import ConfigError, ValidationError
from iterrefine.io.ingest import RawRecord, inspect_record
from iterrefine.io.inputs import InputSpec, open_input
from iterrefine.item.records import item_from_raw

pytestmark = pytest.mark.unit

HEADER = b"id,instruction,input,output\r\n"


def read(path: Path) -> list[RawRecord]:
    return list(open_input(InputSpec(str(path))).records())


def csv_file(tmp_path: Path, *rows: bytes, header: bytes = HEADER) -> Path:
    path = tmp_path / "in.csv"
    path.write_bytes(header + b"".join(rows))
    return path


def fate(record: RawRecord, max_bytes: int = 64 * 1024) -> tuple[str, str | None]:
    """(the id ingest files it under, its reason or None)."""
    item_id, _, problem = inspect_record(record, max_bytes=max_bytes)
    return item_id, None if problem is None else problem.reason


def test_a_csv_field_over_128_kib_is_read_then_bounded_by_the_record_limits(
    tmp_path: Path,
) -> None:
    """A 200 KB field is a record (curated when the limit allows it); a 10 MB one is
    dead-lettered as too_large with its head and id; the rows after both still come."""
    path = csv_file(tmp_path,
                    b"big," + b"q" * 200_000 + b",,out\r\n",
                    b"huge," + b"q" * 10_000_000 + b",,out\r\n",
                    b"after,What?,,This.\r\n")
    big, huge, after = read(path)
    assert item_from_raw(big.data, max_bytes=512 * 1024).original.instruction == "q" * 200_000
    assert fate(big) == ("big", "too_large")  # the default 64 KiB limit, under its own id
    assert huge.problem is not None and huge.problem.reason == "too_large"
    assert len(huge.data) <= 64 * 1024 and huge.length > 10_000_000
    assert fate(huge) == ("huge", "too_large")
    assert fate(after) == ("after", None) and after.line == 4


def test_csv_rows_with_more_or_fewer_fields_than_the_header_are_refused(
    tmp_path: Path,
) -> None:
    """No shifted values: a row of 5 or 2 fields under a 4-field header is a field_count
    dead letter under its own id, carrying the row as the file had it."""
    path = csv_file(tmp_path, b"ok,Say hi.,,hi\r\n", b"extra,too,many,fields,here\r\n",
                    b"short,only two\r\n", b"ok2,Say bye.,,bye\r\n")
    records = read(path)
    assert [fate(r) for r in records] == [
        ("ok", None), ("extra", "field_count"), ("short", "field_count"), ("ok2", None)]
    assert records[1].data == b"extra,too,many,fields,here\r\n"
    assert "more than the header's 4" in str(records[1].problem)


def test_one_latin1_byte_dead_letters_only_its_row(tmp_path: Path) -> None:
    """A CSV with one byte that is not UTF-8 is not refused whole: that row is
    invalid_utf8 (as in JSON lines), every other row is read."""
    path = csv_file(tmp_path, b"a,Name a caf\xe9.,,Flore\r\n", b"b,Name a river.,,Seine\r\n")
    first, second = read(path)
    assert fate(first) == ("a", "invalid_utf8") and first.data == b"a,Name a caf\xe9.,,Flore\r\n"
    assert fate(second) == ("b", None)


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_csv_line_endings_and_blank_rows(tmp_path: Path, end: bytes) -> None:
    """LF, CRLF and old-Mac CR files read alike (a quoted line break stays in its field);
    blank rows (an empty line, ",,,", spaces) are skipped, not refused."""
    path = csv_file(tmp_path, b'a,"two' + end + b'lines",,x' + end, end, b",,," + end,
                    b"  " + end, b"b,Say bye.,,bye" + end, header=HEADER.replace(b"\r\n", end))
    records = read(path)
    assert [fate(r) for r in records] == [("a", None), ("b", None)]
    assert item_from_raw(records[0].data).original.instruction == "two" + end.decode() + "lines"


def test_a_row_past_the_csv_modules_limit_is_one_dead_letter_and_reading_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A field the csv module refuses is that row's unreadable_row, not a traceback."""
    from iterrefine.io import _csv

    monkeypatch.setattr(_csv, "FIELD_LIMIT", 1000)
    path = csv_file(tmp_path, b"a,x,," + b"y" * 5000 + b"\r\n", b"b,Name a river.,,Seine\r\n")
    records = read(path)
    assert [fate(r)[1] for r in records] == ["unreadable_row", None]


@pytest.mark.parametrize(("content", "needle"), [
    (b"\xff\xfei\x00d\x00\n\x00", "UTF-16"),
    (b"instruction,output,output\na,b,c\n", "'output' twice"),
    (b"instr\xe9,output\na,b\n", "not UTF-8"),
])
def test_a_csv_header_that_cannot_be_trusted_stops_before_anything_runs(
    tmp_path: Path, content: bytes, needle: str,
) -> None:
    """UTF-16, a column named twice, a header that is not UTF-8: exit 2, the fix named."""
    path = tmp_path / "in.csv"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=needle):
        read(path)


def test_a_binary_parquet_text_column_is_refused_per_row_never_base64(tmp_path: Path) -> None:
    """A binary instruction column is a wrong_type dead letter per row, under its id; a
    binary column the pipeline does not read (an image) is left alone."""
    table = pa.table({
        "id": ["r1", "r2"],
        "instruction": pa.array([b"Say hi.", b"Say bye."], pa.binary()),
        "output": ["hi", "bye"],
    })
    pq.write_table(table, tmp_path / "bin.parquet")
    records = read(tmp_path / "bin.parquet")
    assert [fate(r) for r in records] == [("r1", "wrong_type"), ("r2", "wrong_type")]
    assert "binary" in str(records[0].problem)
    image = pa.table({"instruction": ["Say hi."], "output": ["hi"],
                      "image": pa.array([b"\x89PNG"], pa.binary())})
    pq.write_table(image, tmp_path / "image.parquet")
    (record,) = read(tmp_path / "image.parquet")
    assert fate(record)[1] is None


def test_a_parquet_file_damaged_mid_way_ends_in_one_dead_letter(tmp_path: Path) -> None:
    """Rows before a corrupt row group are read; the failure is one unreadable_input
    record saying where reading stopped (the run accounts for it), not a traceback."""
    rows = [{"instruction": f"Question {i} " * 20, "output": f"Answer {i} " * 20}
            for i in range(3000)]
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=1500)
    column = pq.ParquetFile(path).metadata.row_group(1).column(0)
    data = bytearray(path.read_bytes())
    start = column.data_page_offset + 20
    data[start:start + 200] = b"\0" * 200
    path.write_bytes(bytes(data))
    records = read(path)
    *good, last = records
    assert 1024 <= len(good) < 3000 and all(r.problem is None for r in good)
    assert last.problem is not None and last.problem.reason == "unreadable_input"
    assert f"past record {len(good)}" in str(last.problem)


@pytest.mark.parametrize("record", [
    {"id": "m1", "instruction": "Hi?", "messages": [
        {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]},
    {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
     "output": "c"},
    {"messages": [], "conversations": []},
])
def test_a_chat_record_with_instruction_fields_is_refused_not_half_read(
    record: dict[str, object],
) -> None:
    """messages + instruction (or two chat shapes): ambiguous_shape, never messages dropped."""
    with pytest.raises(ValidationError) as caught:
        item_from_raw(json.dumps(record).encode())
    assert caught.value.reason == "ambiguous_shape"


def test_null_instruction_fields_beside_messages_count_as_absent() -> None:
    """A table's union schema gives chat rows null instruction columns: still chat."""
    record = {"messages": [{"role": "user", "content": "a"},
                           {"role": "assistant", "content": "b"}],
              "instruction": None, "output": None}
    assert item_from_raw(json.dumps(record).encode()).original.format == "messages"


@pytest.mark.parametrize(("record", "expected"), [
    ({"id": "no-output", "instruction": "Q?"}, ("no-output", "missing_field")),
    ({"id": 7, "instruction": "Q?", "output": "y" * 70_000}, ("7", "too_large")),
    ({"id": "m", "messages": "not a list"}, ("m", "wrong_type")),
    ({"id": True, "instruction": "Q?"}, (None, "invalid_id")),
])
def test_a_refused_json_record_is_filed_under_its_own_id(
    record: dict[str, object], expected: tuple[str | None, str],
) -> None:
    """The DLQ row of a record with a valid id of its own carries that id, not raw-<hash>."""
    data = json.dumps(record).encode()
    item_id, reason = fate(RawRecord(data, 1, "in.jsonl"))
    want_id, want_reason = expected
    assert reason == want_reason
    assert item_id == want_id if want_id is not None else item_id.startswith("raw-")
