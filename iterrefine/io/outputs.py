"""Export rows in the shape a trainer reads, as JSON lines or Parquet.

Shapes (``--shape``):

* ``full`` — the curated fields, then the item's whole state under ``item`` (lineage:
  scores, every round, provenance). In Parquet, ``item`` is a JSON text column.
* ``alpaca`` — ``id, instruction, input, output``.
* ``messages`` — ``id, messages`` (OpenAI chat: system turn if the record had one,
  user = instruction + input, assistant = output).
* ``sharegpt`` — ``id, conversations`` (``from``: system / human / gpt).

The file type follows the output's name: ``.parquet`` is Parquet, ``.json`` one JSON
array (``out.json``, ``out.rejected.json``), anything else JSON lines.

Rejected rows carry ``status`` and ``reason`` at top level in every shape. Dead
letters are always written as JSON lines beside the output, whatever its extension:
they hold the original bytes for a person to fix, and ``iterrefine run`` reads a
fixed DLQ file back as the original records.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, get_args

import msgspec

from iterrefine.errors import ConfigError
from iterrefine.io.export import ExportPaths, Terminal
from iterrefine.item.model import Item

Shape = Literal["full", "alpaca", "messages", "sharegpt"]
SHAPES: tuple[str, ...] = get_args(Shape)
#: Names that promise a format we do not write (anything else not .parquet is JSON lines).
_NOT_WRITTEN = frozenset({".csv", ".tsv", ".arrow", ".feather", ".xlsx", ".pq"})
_PARQUET_BATCH_ROWS = 1024
_encoder = msgspec.json.Encoder()


def output_paths(output: Path) -> ExportPaths:
    """``out.parquet`` → ``out.parquet``, ``out.rejected.parquet``, ``out.dlq.jsonl``
    (``.json`` alike); any other name as :meth:`ExportPaths.beside`."""
    suffix = output.suffix.lower()
    if suffix not in (".parquet", ".json"):
        return ExportPaths.beside(output)
    stem = output.name[: -len(suffix)]
    return ExportPaths(curated=output, rejected=output.with_name(f"{stem}.rejected{suffix}"),
                       dlq=output.with_name(f"{stem}.dlq.jsonl"))


def check_output(output: Path, shape: str) -> None:
    """Fail before the run if the output cannot be written as asked."""
    if shape not in SHAPES:
        raise ConfigError(f"unknown --shape {shape!r}; the shapes are: {', '.join(SHAPES)}")
    if output.suffix.lower() in _NOT_WRITTEN:
        raise ConfigError(f"{output}: outputs are JSON lines (.jsonl, the default for any other "
                          "name) or Parquet (.parquet)")
    if output.suffix.lower() == ".parquet":
        _pyarrow()


def user_turn(item: Item) -> str:
    """The instruction and its input as one user message (the Alpaca template's order)."""
    return f"{item.instruction}\n\n{item.input}" if item.input.strip() else item.instruction


def shaped_row(terminal: Terminal, shape: Shape) -> dict[str, Any]:
    """The exported row of ``terminal`` (an item, not a dead letter) in ``shape``."""
    item = terminal.item
    assert item is not None, "dead letters have one shape"
    if shape == "full":
        row = terminal.row()
    elif shape == "alpaca":
        row = {"id": item.id, "instruction": item.instruction, "input": item.input,
               "output": item.output}
    else:
        turns = [("system", item.original.system)] if item.original.system else []
        turns += [("user", user_turn(item)), ("assistant", item.output)]
        if shape == "messages":
            row = {"id": item.id, "messages": [{"role": r, "content": t} for r, t in turns]}
        else:
            speaker = {"system": "system", "user": "human", "assistant": "gpt"}
            row = {"id": item.id,
                   "conversations": [{"from": speaker[r], "value": t} for r, t in turns]}
    if terminal.outcome == "rejected":
        row["status"] = item.status
        row["reason"] = rejection_reason(item)
    return row


def rejection_reason(item: Item) -> str:
    if item.status_reason:
        return item.status_reason
    if item.judgement is not None:
        return item.judgement.reason
    return item.status


def write_outputs(
    terminals: Iterable[Terminal], output: Path, *, shape: Shape = "full"
) -> tuple[ExportPaths, dict[str, int]]:
    """Write curated, rejected and dead-lettered rows beside ``output``; return paths, counts."""
    paths = output_paths(output)
    paths.curated.parent.mkdir(parents=True, exist_ok=True)
    sinks: dict[str, _Sink] = {
        "curated": _sink(paths.curated, shape),
        "rejected": _sink(paths.rejected, shape),
        "dlq": _JsonSink(paths.dlq),
    }
    counts = dict.fromkeys(sinks, 0)
    try:
        for terminal in terminals:
            row = terminal.row() if terminal.item is None else shaped_row(terminal, shape)
            sinks[terminal.outcome].write(row)
            counts[terminal.outcome] += 1
    finally:
        for sink in sinks.values():
            sink.close()
    return paths, counts


def export_row(terminal: Terminal) -> dict[str, Any]:
    """The ``full`` row of any terminal record (dead letters have their own)."""
    return terminal.row() if terminal.item is None else shaped_row(terminal, "full")


def reshape_export(streamed: ExportPaths, output: Path, shape: Shape) -> ExportPaths:
    """Rewrite full JSON-lines export files as ``output`` in ``shape``; remove the originals."""
    def terminals() -> Iterator[Terminal]:
        for outcome, path in (("curated", streamed.curated), ("rejected", streamed.rejected)):
            for row in read_rows(path) if path.exists() else ():
                item = msgspec.convert(row["item"], Item)
                yield Terminal(id=item.id, outcome=outcome, revision=item.revision,  # type: ignore[arg-type]
                               timestamp_ms=0, item=item, meta={}, raw=b"")
    paths, _ = write_outputs(terminals(), output, shape=shape)
    for path in (streamed.curated, streamed.rejected):
        path.unlink(missing_ok=True)
    if streamed.dlq.exists():
        os.replace(streamed.dlq, paths.dlq)  # dead letters keep their one shape
    return paths


def read_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of an exported file (JSON lines or Parquet), ``item`` decoded in both."""
    if path.suffix.lower() == ".parquet":
        parquet = _pyarrow().parquet.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
            for row in batch.to_pylist():
                if isinstance(row.get("item"), str):
                    row["item"] = json.loads(row["item"])
                yield row
        return
    if path.suffix.lower() == ".json" and _is_array(path):
        yield from json.loads(path.read_bytes())  # written whole, read whole
        return
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def _is_array(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(1) == b"["


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ConfigError("writing Parquet needs the pyarrow package: "
                          "pip install 'iterrefine[parquet]'") from None
    return pyarrow


class _Sink:
    def write(self, row: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _JsonSink(_Sink):
    def __init__(self, path: Path) -> None:
        self._handle = path.open("wb")

    def write(self, row: dict[str, Any]) -> None:
        self._handle.write(_encoder.encode(row) + b"\n")

    def close(self) -> None:
        self._handle.close()


class _JsonArraySink(_Sink):
    """One JSON array, a row a line (``[]`` when empty): what ``-o out.json`` promises."""

    def __init__(self, path: Path) -> None:
        self._handle = path.open("wb")
        self._handle.write(b"[")
        self._separator = b"\n"

    def write(self, row: dict[str, Any]) -> None:
        self._handle.write(self._separator + _encoder.encode(row))
        self._separator = b",\n"

    def close(self) -> None:
        self._handle.write(b"\n]\n" if self._separator == b",\n" else b"]\n")
        self._handle.close()


def _sink(path: Path, shape: Shape) -> _Sink:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _ParquetSink(path, shape)
    return _JsonArraySink(path) if suffix == ".json" else _JsonSink(path)


class _ParquetSink(_Sink):
    """Rows buffered into record batches of a fixed schema per shape (an empty file too)."""

    def __init__(self, path: Path, shape: Shape) -> None:
        pa = _pyarrow()
        self._pa = pa
        self._schema = _schema(pa, shape)
        self._writer = pa.parquet.ParquetWriter(path, self._schema)
        self._rows: list[dict[str, Any]] = []

    def write(self, row: dict[str, Any]) -> None:
        if "item" in row:
            row = {**row, "item": _encoder.encode(row["item"]).decode()}
        self._rows.append(row)
        if len(self._rows) >= _PARQUET_BATCH_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            table = self._pa.Table.from_pylist(self._rows, schema=self._schema)
            self._writer.write_table(table)
            self._rows = []

    def close(self) -> None:
        self._flush()
        self._writer.close()


def _schema(pa: Any, shape: Shape) -> Any:
    text = pa.string()
    rejection = [("status", text), ("reason", text)]
    if shape == "full":
        fields = [("id", text), ("instruction", text), ("input", text), ("output", text),
                  ("status", text), ("reason", text), ("item", text)]
    elif shape == "alpaca":
        fields = [("id", text), ("instruction", text), ("input", text), ("output", text),
                  *rejection]
    elif shape == "messages":
        turn = pa.struct([("role", text), ("content", text)])
        fields = [("id", text), ("messages", pa.list_(turn)), *rejection]
    else:
        turn = pa.struct([("from", text), ("value", text)])
        fields = [("id", text), ("conversations", pa.list_(turn)), *rejection]
    return pa.schema(fields)
