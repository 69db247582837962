"""Input formats: JSON lines/array, Parquet, CSV, saved HF datasets, chat records, trials."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from iterrefine.cli import main
from iterrefine.errors import ConfigError, ValidationError
from iterrefine.io.inputs import InputSpec, open_input
from iterrefine.item.records import item_from_raw
from iterrefine.observe.logging import configure_logging

ROWS = [
    {"id": f"r{i}", "instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."}
    for i in range(10)
]


@pytest.fixture(autouse=True)
def _logging_back_to_real_stderr() -> Iterator[None]:
    """The CLI points logging at capsys' stderr; later tests must not write to it once closed."""
    yield
    configure_logging(json=True, stream=sys.__stderr__)


def _ids(spec: InputSpec) -> list[str]:
    return [item_from_raw(r.data).id for r in open_input(spec).records()]


@pytest.mark.unit
def test_parquet_is_read_by_record_batches_with_ids_and_row_numbers(tmp_path: Path) -> None:
    """A Parquet file of several row groups yields every row, its id kept, numbered from 1."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path, row_group_size=3)
    source = open_input(InputSpec(str(path)))
    records = list(source.records())
    assert source.format == "parquet"
    assert [item_from_raw(r.data).id for r in records] == [row["id"] for row in ROWS]
    assert [r.line for r in records] == list(range(1, 11))
    assert source.count() == 10


@pytest.mark.unit
def test_parquet_nulls_are_absent_fields(tmp_path: Path) -> None:
    """A null cell is a missing field: a null id falls back to the content hash."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": None, "instruction": "Q?", "input": None,
                                          "output": "A."}]), path)
    item = item_from_raw(next(open_input(InputSpec(str(path))).records()).data)
    assert item.original.input == ""
    assert len(item.id) == 24  # the stable content hash


@pytest.mark.unit
def test_csv_with_byte_order_mark_and_quoted_newlines(tmp_path: Path) -> None:
    """CSV rows become records; a BOM and a newline inside a quoted cell are handled."""
    path = tmp_path / "data.csv"
    path.write_bytes("\ufeffid,instruction,input,output\n"
                     'a,"Two\nlines?",,Yes.\nb,Q?,ctx,A.\n'.encode())
    source = open_input(InputSpec(str(path)))
    items = [item_from_raw(r.data) for r in source.records()]
    assert [i.id for i in items] == ["a", "b"]
    assert items[0].instruction == "Two\nlines?"
    assert source.count() == 2


@pytest.mark.unit
def test_saved_hugging_face_dataset_is_read(tmp_path: Path) -> None:
    """A directory written by datasets' save_to_disk is detected and read (DatasetDict too)."""
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "ds"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(path))
    source = open_input(InputSpec(str(path)))
    assert source.format == "hf"
    assert _ids(InputSpec(str(path))) == [row["id"] for row in ROWS]
    assert source.count() == 10
    with pytest.raises(ConfigError, match="no split 'test'"):
        open_input(InputSpec(str(path), split="test"))


@pytest.mark.unit
def test_single_turn_chat_records_map_to_alpaca_fields() -> None:
    """OpenAI messages and ShareGPT conversations: user → instruction, assistant → output."""
    openai = item_from_raw(json.dumps({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]},
        {"role": "assistant", "content": "Paris."}]}).encode())
    sharegpt = item_from_raw(json.dumps({"id": "s1", "conversations": [
        {"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]}).encode())
    assert (openai.instruction, openai.input, openai.output) == ("Capital of France?", "", "Paris.")
    assert openai.original.system == "Be brief." and openai.original.format == "messages"
    assert (sharegpt.id, sharegpt.instruction, sharegpt.original.format) == ("s1", "2+2?",
                                                                            "sharegpt")


@pytest.mark.unit
@pytest.mark.parametrize("record", [
    {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                  {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]},
    {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"},
                       {"from": "human", "value": "c"}]},
])
def test_multi_turn_chat_is_rejected_as_multi_turn(record: dict[str, object]) -> None:
    """A conversation of more than one exchange fails validation with reason multi_turn."""
    with pytest.raises(ValidationError) as caught:
        item_from_raw(json.dumps(record).encode())
    assert caught.value.reason == "multi_turn"


@pytest.mark.unit
@pytest.mark.parametrize(("name", "content"), [
    ("data.parquet", b"instruction,output\nQ,A\n"),  # text named .parquet
    ("data.jsonl", b"PAR1\x00\x01binary"),           # Parquet bytes named .jsonl
    ("data.bin", b"\x00\x01\x02\x03"),                # nothing recognisable
])
def test_unreadable_input_stops_before_ingest(tmp_path: Path, name: str, content: bytes) -> None:
    """A file unreadable in its format raises ConfigError naming the formats."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"parquet \(\.parquet\), csv"):
        open_input(InputSpec(str(path)))


def test_run_exits_2_on_unreadable_input_without_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`iterrefine run` on an unreadable file exits 2 with the formats, before any startup."""
    path = tmp_path / "data.parquet"
    path.write_text("not parquet\n")
    code = main(["run", str(path), "-o", str(tmp_path / "out.jsonl"), "--llm", "sim",
                 "--data-dir", str(tmp_path / "state")])
    assert code == 2
    assert "the formats are" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.unit
def test_limit_and_seeded_sample_pick_records(tmp_path: Path) -> None:
    """--limit takes the first N; --sample N --seed S is repeatable and in input order."""
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    assert _ids(InputSpec(str(path), limit=3)) == ["r0", "r1", "r2"]
    first = _ids(InputSpec(str(path), sample=4, seed=7))
    assert first == _ids(InputSpec(str(path), sample=4, seed=7))
    assert len(first) == 4 and first == sorted(first, key=lambda i: int(i[1:]))
    assert first != _ids(InputSpec(str(path), sample=4, seed=8))
    assert open_input(InputSpec(str(path), limit=3)).count() == 10


@pytest.mark.unit
def test_dead_letter_rows_are_read_as_their_original_records(tmp_path: Path) -> None:
    """A row of an exported DLQ file is replaced by the (fixed) original record it carries."""
    fixed = {"id": "x1", "instruction": "Fixed?", "input": "", "output": "Yes."}
    path = tmp_path / "out.dlq.jsonl"
    path.write_text(json.dumps({"id": "x1", "reason": "missing_field", "stage": "score",
                                "error": "ValidationError", "message": "",
                                "original": json.dumps(fixed)}) + "\n")
    item = item_from_raw(next(open_input(InputSpec(str(path))).records()).data)
    assert (item.id, item.instruction) == ("x1", "Fixed?")


@pytest.mark.unit
@pytest.mark.parametrize(("module", "name", "extra"), [
    ("pyarrow", "data.parquet", "parquet"), ("datasets", "ds", "hf")])
def test_a_missing_extra_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, name: str, extra: str
) -> None:
    """Without pyarrow / datasets installed, the error names the extra to pip install."""
    path = tmp_path / name
    if extra == "hf":
        path.mkdir()
        (path / "dataset_info.json").write_text("{}")
    else:
        path.write_bytes(b"PAR1")
    for loaded in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, loaded)
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ConfigError, match=rf"pip install 'iterrefine\[{extra}\]'"):
        open_input(InputSpec(str(path)))
