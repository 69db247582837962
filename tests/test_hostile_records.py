"""Hostile input records: every one is a clear validation error, never a crash or a guess."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiokafka.structs import ConsumerRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from iterrefine.errors import ConfigError, ValidationError
from iterrefine.io.export import ExportPaths, Terminal, load_rows, terminal_of, write_export
from iterrefine.io.ingest import read_records
from iterrefine.item._ids import normalise_id
from iterrefine.item.jsonguard import duplicate_key, scan_duplicate_key, split_array
from iterrefine.item.model import INPUT_REASONS, decode_item, encode_item
from iterrefine.item.records import item_from_raw
from iterrefine.runtime.stage import RecordLike

from .hostile_corpus import BAD, corpus, good_lines

pytestmark = pytest.mark.unit


def reason_of(data: bytes, max_bytes: int = 64 * 1024) -> str:
    with pytest.raises(ValidationError) as caught:
        item_from_raw(data, max_bytes=max_bytes)
    return caught.value.reason


@pytest.mark.parametrize("kind", sorted(k for k, (_, where) in BAD.items() if where == "score"))
def test_each_malformed_kind_is_a_validation_error_with_its_reason(kind: str) -> None:
    """Every malformed kind the score stage sees raises ValidationError with its reason."""
    line, _ = BAD[kind]
    assert reason_of(line) == kind.split(":")[0]


def test_every_corpus_reason_is_an_input_reason() -> None:
    """Each reason the corpus produces is in INPUT_REASONS (bad input, not a processing failure)."""
    _, expected = corpus()
    assert {reason for reason in expected if reason != "ok"} <= INPUT_REASONS


def test_good_lines_of_the_corpus_validate() -> None:
    """The corpus's good lines (BOM, U+2028, extra fields, Dolly, int ids…) are all items."""
    for line in good_lines():
        item_from_raw(line.removeprefix(b"\xef\xbb\xbf").strip())


def test_nesting_depth_is_bounded_before_parsing() -> None:
    """1,000 and 100,000 levels: too_deep, not RecursionError (msgspec alone recurses)."""
    for depth in (1_000, 100_000):
        assert reason_of(b"[" * depth + b"]" * depth, max_bytes=10**6) == "too_deep"
        assert reason_of(b'{"a":' * depth + b"1" + b"}" * depth, max_bytes=10**6) == "too_deep"
    shallow = b'{"instruction": "x", "output": "y", "meta": ' + b"[" * 60 + b"]" * 60 + b"}"
    assert item_from_raw(shallow).instruction == "x"


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    """A text full of brackets and quotes is content, not nesting or keys."""
    text = '[[[{{{"id": 1, "id": 2}}}]]] \\" [' * 50
    data = json.dumps({"instruction": text, "output": "y"}).encode()
    assert scan_duplicate_key(data) is None
    assert item_from_raw(data).instruction == text


def test_duplicate_keys_are_found_at_any_depth_and_through_escapes() -> None:
    """Equal keys, also spelt with \\u escapes or nested, are reported as duplicate_key."""
    assert reason_of(b'{"instruction":"a","output":"b","\\u006futput":"c"}') == "duplicate_key"
    assert reason_of(b'{"instruction":"a","output":"b","m":{"k":1,"k":2}}') == "duplicate_key"
    # The same key in two sibling objects is fine.
    item_from_raw(b'{"instruction":"a","output":"b","m":[{"k":1},{"k":2}]}')


@pytest.mark.parametrize(("given", "expected"), [
    ("abc", "abc"), ("  padded\t", "padded"), (77, "77"), (-3, "-3"),
    ("e\u0301t\u00e9", "\u00e9t\u00e9"), ("has inner  spaces", "has inner  spaces"),
])
def test_ids_are_normalised_strings(given: object, expected: str) -> None:
    """Strings are NFC-normalised and stripped; integers become their decimal string."""
    assert normalise_id(given) == expected


@pytest.mark.parametrize("given", [True, False, 1.5, 1.0, None, [], {}, "", "   ", "a\x00b",
                                   "x" * 257, "line\u2028break"])
def test_other_ids_are_refused(given: object) -> None:
    """bool, float, null, containers, blank, control characters, over-long: invalid_id."""
    with pytest.raises(ValidationError) as caught:
        normalise_id(given)
    assert caught.value.reason == "invalid_id"


def test_an_item_envelope_never_raises_anything_but_validation_error() -> None:
    """decode_item on hostile bytes (deep, binary, huge numbers) raises only ValidationError."""
    for data in (b"[" * 5000, b"\xff\xfe", b'{"schema":"iterrefine.item/1","id":' + b"9" * 5000
                 + b"}", b"", b"null", b'{"id":' + b"[" * 3000 + b"}"):
        with pytest.raises(ValidationError):
            decode_item(data)


def test_lone_surrogate_in_item_text_is_encoded_not_stuck() -> None:
    """A lone surrogate (Python json lets it through from model answers) becomes U+FFFD."""
    item = item_from_raw(b'{"instruction":"x","output":"y"}').with_changes(output="a\ud800b")
    assert decode_item(encode_item(item)).output == "a\ufffdb"


def test_bom_crlf_and_separators_read_as_one_record_per_line(tmp_path: Path) -> None:
    """BOM at file start, CRLF endings, U+2028/U+0085 inside text: one record per \\n line."""
    rows = [{"id": "a", "instruction": "one\u2028two", "output": "x\u0085y"},
            {"id": "b", "instruction": "three\u2029", "output": "z"}]
    body = "\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode()
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + body + b"\r\n")
    records = list(read_records(path))
    assert [r.line for r in records] == [1, 2]
    assert [item_from_raw(r.data).instruction for r in records] == ["one\u2028two", "three\u2029"]


def test_a_json_array_line_in_jsonl_is_only_that_lines_error(tmp_path: Path) -> None:
    """First line an array, then objects: JSON lines, and the array line is not_object."""
    path = tmp_path / "in.jsonl"
    path.write_text('[{"instruction": "a", "output": "b"}]\n{"instruction": "c", "output": "d"}\n')
    records = list(read_records(path))
    assert len(records) == 2
    assert reason_of(records[0].data) == "not_object"
    assert item_from_raw(records[1].data).instruction == "c"


def test_a_json_array_file_keeps_each_elements_own_bytes(tmp_path: Path) -> None:
    """A JSON-array file (BOM, pretty-printed) gives each element, duplicate keys and all."""
    path = tmp_path / "in.json"
    path.write_bytes(b'\xef\xbb\xbf[\n  {"instruction": "a", "output": "b"},\n'
                     b'  {"instruction": "c", "instruction": "c2", "output": "d"},\n  42\n]\n')
    records = list(read_records(path))
    assert [r.line for r in records] == [2, 3, 4]
    assert item_from_raw(records[0].data).output == "b"
    assert reason_of(records[1].data) == "duplicate_key"
    assert reason_of(records[2].data) == "not_object"


def test_a_pretty_printed_array_that_does_not_close_is_refused_whole(tmp_path: Path) -> None:
    """A file starting with a '[' line that is not one array is a clear ConfigError."""
    path = tmp_path / "in.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n')
    with pytest.raises(ConfigError, match="not one complete JSON array"):
        list(read_records(path))


def test_split_array_rejects_trailing_data_and_handles_empty_arrays() -> None:
    """Only bytes that are exactly one array split; [] has no elements."""
    assert split_array(b"[]") == []
    assert split_array(b' [1, "a,]", {"b": [2]}] ') == [(2, 3), (5, 10), (12, 22)]
    assert split_array(b"[1]\n[2]") is None
    assert split_array(b"[1, 2") is None


def test_an_over_long_line_is_read_as_its_head_and_size(tmp_path: Path) -> None:
    """A 3 MB line is not held whole: its head and full size are kept (too_large at ingest)."""
    path = tmp_path / "in.jsonl"
    huge = b'{"instruction": "' + b"x" * 3_000_000 + b'", "output": "y"}'
    path.write_bytes(huge + b'\n{"instruction": "a", "output": "b"}\n')
    first, second = read_records(path)
    assert first.length == len(huge) + 1 and len(first.data) < 1_100_000
    assert second.line == 2


def test_export_rows_with_unicode_line_separators_round_trip(tmp_path: Path) -> None:
    """U+2028, U+2029 and U+0085 in a text survive write_export and load_rows."""
    text = "a\u2028b\u2029c\u0085d\r\ne"
    item = item_from_raw(json.dumps({"id": "sep", "instruction": text, "output": text}).encode())
    paths = ExportPaths.beside(tmp_path / "out.jsonl")
    terminal = Terminal(id=item.id, outcome="curated", revision=0, timestamp_ms=0, item=item,
                        meta={}, raw=b"")
    write_export([terminal], paths)
    (row,) = load_rows(paths.curated)
    assert row["instruction"] == text and row["item"]["original"]["output"] == text
    assert msgspec.json.decode(paths.curated.read_bytes().splitlines()[0])["id"] == "sep"


def test_escaped_quotes_before_colons_in_text_are_not_keys() -> None:
    """Escaped quotes before colons in text: the record validates; a real duplicate is found."""
    text = 'He said "a": 1, "a": 2 and {"k": "v"}'
    data = json.dumps({"instruction": text, "output": text}).encode()
    assert item_from_raw(data).output == text
    assert reason_of(data[:-1] + b', "output": "again"}') == "duplicate_key"


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # A named function, not a lambda: hypothesis reads a lambda's source to check that it
    # recurses, and that check misfired once mid-suite (HypothesisDeprecationWarning).
    keys = st.sampled_from(["id", "a", "instruction", "output", "\\\"", ":"])
    return st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    _containers,
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | _json_values.map(lambda v: json.dumps(v).encode()))
def test_any_bytes_give_an_item_or_a_validation_error(data: bytes) -> None:
    """Arbitrary bytes or JSON never make item_from_raw raise anything else."""
    try:
        item_from_raw(data)
    except ValidationError as exc:
        assert exc.reason and str(exc)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "id", 'q"', "a:"]), _json_values),
                max_size=6))
def test_the_cheap_duplicate_check_agrees_with_the_full_scan(
    pairs: list[tuple[str, object]],
) -> None:
    """duplicate_key's counting shortcut finds exactly the duplicates the token scan finds."""
    data = ("{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "}").encode()
    decoded = msgspec.json.decode(data)
    assert duplicate_key(data, decoded) == scan_duplicate_key(data)


def _record(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> RecordLike:
    return ConsumerRecord("t.items.dlq", 0, 0, 1, 0, key, value, None, 0, len(value), headers)


def test_the_exporter_shows_foreign_records_instead_of_crashing() -> None:
    """A binary key, a garbled revision header, a poison envelope: rows, not exceptions."""
    dead = terminal_of(_record(b"\xffkey", b"\xfe", [("iterrefine.revision", b"\xb2x")]), "dlq")
    assert dead.id == "\ufffdkey" and dead.revision == 0
    assert "original_base64" in dead.row()
    poison = terminal_of(_record(b"k", b"[" * 5000, []), "curated")
    assert poison.outcome == "dlq" and poison.row()["reason"] == "invalid_envelope"
