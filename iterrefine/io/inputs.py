"""Input files as raw records: JSON lines, a JSON array, Parquet, CSV, a Hugging Face dataset.

Every reader yields :class:`~iterrefine.io.ingest.RawRecord` (a record's JSON bytes,
its row number, the file name), so the rest of ingest does not care where a record
came from. Records are streamed: Parquet by record batches, CSV by rows, a saved
Hugging Face dataset from its memory-mapped Arrow files; only a JSON array is read
whole (by :func:`iterrefine.io.ingest.read_records`, which owns JSON decoding).

The format comes from ``--input-format`` or the file name (a directory saved with
``datasets``' ``save_to_disk`` is ``hf``). A file that cannot be read in its format
stops the run before anything is ingested (:class:`~iterrefine.errors.ConfigError`,
exit 2), with a message naming the formats. A row of an exported DLQ file is
replaced by the original record it carries, so a fixed DLQ file can be run again.
"""

from __future__ import annotations

import base64
import csv
import itertools
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import msgspec
import structlog

from iterrefine.errors import ConfigError, IterrefineError, ValidationError
from iterrefine.io._csv import csv_records
from iterrefine.io.ingest import RawRecord, read_records
from iterrefine.item.records import given_id_of

log = structlog.get_logger("iterrefine.ingest")

InputFormat = Literal["json", "parquet", "csv", "hf"]
INPUT_FORMATS: tuple[str, ...] = get_args(InputFormat)
_SUFFIXES: dict[str, InputFormat] = {
    ".jsonl": "json", ".ndjson": "json", ".jsonlines": "json", ".json": "json",
    ".parquet": "parquet", ".pq": "parquet",
    ".csv": "csv", ".tsv": "csv",
}
_HF_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")
_PARQUET_MAGIC = b"PAR1"
_BATCH_ROWS = 1024
_encoder = msgspec.json.Encoder(enc_hook=str)  # dates, decimals: as text
_decoder = msgspec.json.Decoder()

FORMATS_HELP = (
    "json (JSON lines or one JSON array: .jsonl .json .ndjson), parquet (.parquet), "
    "csv (.csv .tsv, with a header row), hf (a directory written by datasets' "
    "save_to_disk, or a Hugging Face hub id with --input-format hf)"
)


@dataclass(frozen=True, slots=True)
class InputSpec:
    """What to read: a path (or hub id), its format, and which records of it."""

    source: str
    format: InputFormat | None = None
    #: Only the first N records (a trial run).
    limit: int | None = None
    #: N records drawn uniformly at random (reservoir sampling) with ``seed``.
    sample: int | None = None
    seed: int = 0
    #: The split of a Hugging Face dataset (default: ``train``, or its only split).
    split: str | None = None


class InputSource:
    """An input opened and checked: :meth:`records` streams it, :meth:`count` sizes it."""

    def __init__(self, spec: InputSpec) -> None:
        if spec.limit is not None and spec.sample is not None:
            raise ConfigError("use either --limit or --sample, not both")
        for name, value in (("--limit", spec.limit), ("--sample", spec.sample)):
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        self.spec = spec
        self.format: InputFormat = detect_format(spec.source, spec.format)
        self._reader = _READERS[self.format](spec)
        # Read the first record now: an unreadable file fails before anything starts.
        self._primed: Iterator[RawRecord] | None = self._reader.check()

    def all_records(self) -> Iterator[RawRecord]:
        """Every record of the input (dead-letter rows unwrapped to their original)."""
        primed, self._primed = self._primed, None
        records = primed if primed is not None else self._reader.records()
        return map(unwrap_dead_letter, _total(records, self._reader.origin))

    def records(self) -> Iterator[RawRecord]:
        """The records this run takes: all, the first ``limit``, or a ``sample``."""
        records = self.all_records()
        if self.spec.limit is not None:
            return itertools.islice(records, self.spec.limit)
        if self.spec.sample is not None:
            return iter(reservoir_sample(records, self.spec.sample, self.spec.seed))
        return records

    def count(self) -> int | None:
        """How many records the whole input holds, read cheaply (None if unknown)."""
        return self._reader.count()


def _total(records: Iterator[RawRecord], origin: str) -> Iterator[RawRecord]:
    """``records`` until the file fails mid-way (a damaged Parquet row group, a read
    error): the failure becomes one dead letter saying where reading stopped, and the
    records before it carry on, instead of a traceback that accounts for none of them."""
    line = 0
    while True:
        try:
            record = next(records)
        except StopIteration:
            return
        except IterrefineError:
            raise
        except Exception as exc:  # the policy: whatever a reader raises ends the file here
            log.error("input_unreadable_from_here", origin=origin, after_record=line,
                      error=f"{type(exc).__name__}: {exc}")
            problem = ValidationError(
                f"{origin} could not be read past record {line} ({type(exc).__name__}: "
                f"{exc}); the records after it were not read", reason="unreadable_input")
            yield RawRecord(b"", line + 1, origin, problem=problem)
            return
        line = record.line
        yield record


def open_input(spec: InputSpec) -> InputSource:
    """Open and check ``spec``; raise :class:`ConfigError` if it cannot be read."""
    return InputSource(spec)


def detect_format(source: str, given: InputFormat | None) -> InputFormat:
    path = Path(source)
    if given is not None:
        if given not in INPUT_FORMATS:
            raise ConfigError(f"unknown input format {given!r}; the formats are: {FORMATS_HELP}")
        if given != "hf" and not path.is_file():
            raise ConfigError(f"input file {source} does not exist")
        return given
    if path.is_dir():
        if any((path / marker).exists() for marker in _HF_MARKERS):
            return "hf"
        raise ConfigError(f"{source} is a directory but not a saved Hugging Face dataset; "
                          f"the formats are: {FORMATS_HELP}")
    if not path.exists():
        raise ConfigError(f"input file {source} does not exist (a Hugging Face hub id needs "
                          "--input-format hf)")
    by_name = _SUFFIXES.get(path.suffix.lower())
    if by_name is not None:
        return by_name
    head = _head(path)
    if head.startswith(_PARQUET_MAGIC):
        return "parquet"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"{", b"["):
        return "json"
    raise ConfigError(f"cannot tell the format of {source} from its name or its first bytes; "
                      f"pass --input-format, one of: {FORMATS_HELP}")


def unwrap_dead_letter(record: RawRecord) -> RawRecord:
    """A row of an exported DLQ file becomes the original record it carries."""
    data = record.data
    if not (data[:1] == b"{" and b'"reason"' in data and b'"original' in data):
        return record  # cheap test first: almost every record is not a dead letter
    try:
        row = _decoder.decode(data)
    except msgspec.DecodeError:
        return record
    if not (isinstance(row, dict) and "reason" in row and "stage" in row):
        return record
    original = row.get("original")
    if isinstance(original, str):
        return RawRecord(original.encode(), record.line, record.origin)
    if isinstance(original, dict | list):
        return RawRecord(_encoder.encode(original), record.line, record.origin)
    if isinstance(row.get("original_base64"), str):
        return RawRecord(base64.b64decode(row["original_base64"]), record.line, record.origin)
    return record


def reservoir_sample(records: Iterable[RawRecord], size: int, seed: int) -> list[RawRecord]:
    """``size`` records drawn uniformly (Algorithm R), in input order; memory O(size)."""
    rng = random.Random(seed)
    chosen: list[RawRecord] = []
    for seen, record in enumerate(records):
        if seen < size:
            chosen.append(record)
        else:
            slot = rng.randint(0, seen)
            if slot < size:
                chosen[slot] = record
    return sorted(chosen, key=lambda r: r.line)


def _head(path: Path, size: int = 4096) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(size)
    except OSError as exc:
        raise ConfigError(f"cannot read input {path}: {exc.strerror}") from None


#: The columns the pipeline reads (any other is carried along and ignored).
_READ_COLUMNS = frozenset({"id", "instruction", "input", "output", "context", "response",
                           "category", "messages", "conversations"})


def _binary_column(value: Any, key: str = "") -> str | None:
    """The column (or nested key) holding bytes, if any: never text by guesswork."""
    if isinstance(value, bytes | bytearray | memoryview):
        return key
    if isinstance(value, dict):
        return next((found for k, v in value.items()
                     if (found := _binary_column(v, f"{key}.{k}" if key else str(k)))
                     is not None), None)
    if isinstance(value, list | tuple):
        return next((found for v in value if (found := _binary_column(v, key)) is not None),
                    None)
    return None


def _row_record(row: dict[str, Any], number: int, origin: str) -> RawRecord:
    # A table's null means "no value": drop it, so shapes are told apart by present columns.
    present = {key: value for key, value in row.items() if value is not None}
    data = _encoder.encode(present)  # bytes become base64 text here: refused below
    column = _binary_column({k: v for k, v in present.items() if k in _READ_COLUMNS})
    if column is None:
        return RawRecord(data, number, origin)
    problem = ValidationError(
        f"row {number}: column {column!r} holds binary data, not text; store it as a UTF-8 "
        "string column (it is not decoded by guesswork)", reason="wrong_type")
    problem.item_id = given_id_of(present)
    return RawRecord(data, number, origin, problem=problem)


def _missing_extra(what: str, module: str, extra: str) -> ConfigError:
    return ConfigError(f"reading {what} needs the {module} package: "
                       f"pip install 'iterrefine[{extra}]'")


class _Reader:
    """One format: ``records()`` streams it, ``count()`` sizes it, ``check()`` opens it."""

    name = ""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self.path = Path(spec.source)
        self.origin = self.path.name or spec.source

    def check(self) -> Iterator[RawRecord]:
        """Fail now (ConfigError) if the input is unreadable; return all its records."""
        records = self.records()
        try:
            first = next(records, None)
        except (OSError, ValueError, csv.Error, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {self.spec.source} as {self.name}: {exc}; the "
                              f"formats are: {FORMATS_HELP}") from None
        return records if first is None else itertools.chain([first], records)

    def records(self) -> Iterator[RawRecord]:
        raise NotImplementedError

    def count(self) -> int | None:
        raise NotImplementedError


class _JsonReader(_Reader):
    name = "json"

    def check(self) -> Iterator[RawRecord]:
        head = _head(self.path)
        if head.startswith(_PARQUET_MAGIC) or b"\x00" in head:
            raise ConfigError(f"{self.spec.source} is not text (a binary file read as JSON "
                              f"lines); pass --input-format, one of: {FORMATS_HELP}")
        return super().check()

    def records(self) -> Iterator[RawRecord]:
        return read_records(self.path)

    def count(self) -> int:
        # The records ingest would send (array or lines, as ingest decides), not validated.
        return sum(1 for _ in read_records(self.path))


class _CsvReader(_Reader):
    name = "csv"

    def records(self) -> Iterator[RawRecord]:
        return csv_records(self.path, self.origin)

    def count(self) -> int:
        return sum(1 for _ in csv_records(self.path, self.origin))


class _ParquetReader(_Reader):
    name = "parquet"

    def _file(self) -> Any:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise _missing_extra("Parquet", "pyarrow", "parquet") from None
        try:
            file = pq.ParquetFile(self.path)
        except Exception as exc:  # pyarrow raises ArrowInvalid (a ValueError) or OSError
            raise ConfigError(f"cannot read {self.spec.source} as Parquet: {exc}; the formats "
                              f"are: {FORMATS_HELP}") from None
        names = file.schema_arrow.names
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ConfigError(f"{self.spec.source} has more than one column named "
                              f"{', '.join(map(repr, twice))}: which value counts would be a "
                              "guess; rename them")
        return file

    def records(self) -> Iterator[RawRecord]:
        number = 0
        for batch in self._file().iter_batches(batch_size=_BATCH_ROWS):
            for row in batch.to_pylist():
                number += 1
                yield _row_record(row, number, self.origin)

    def count(self) -> int:
        return int(self._file().metadata.num_rows)


class _HuggingFaceReader(_Reader):
    name = "a Hugging Face dataset"

    def _dataset(self) -> Any:
        try:
            import datasets
        except ImportError:
            raise _missing_extra("a Hugging Face dataset", "datasets", "hf") from None
        if self.path.is_dir():
            try:
                loaded = datasets.load_from_disk(str(self.path))
            except (FileNotFoundError, ValueError) as exc:
                raise ConfigError(f"cannot load the dataset in {self.path}: {exc}") from None
            if isinstance(loaded, datasets.DatasetDict):
                return loaded[self._split(list(loaded))]
            return loaded
        # A hub id (needs network; the hub's own cache and token settings apply).
        return datasets.load_dataset(self.spec.source, split=self.spec.split or "train",
                                     streaming=True)

    def _split(self, splits: list[str]) -> str:
        wanted = self.spec.split or ("train" if "train" in splits or len(splits) != 1
                                     else splits[0])
        if wanted not in splits:
            raise ConfigError(f"the dataset has no split {wanted!r}; its splits are: "
                              f"{', '.join(splits)} (choose one with --split)")
        return wanted

    def records(self) -> Iterator[RawRecord]:
        return (_row_record(row, n, self.origin)
                for n, row in enumerate(self._rows(self._dataset()), start=1))

    @staticmethod
    def _rows(dataset: Any) -> Iterator[dict[str, Any]]:
        if hasattr(dataset, "num_rows"):  # a local Dataset: Arrow batches, ~5x faster than rows
            for table in dataset.with_format("arrow").iter(batch_size=_BATCH_ROWS):
                yield from table.to_pylist()
        else:  # streamed from the hub
            for row in dataset:
                yield dict(row)

    def count(self) -> int | None:
        dataset = self._dataset()
        rows = getattr(dataset, "num_rows", None)
        if isinstance(rows, int):
            return rows
        # Streamed from the hub: the dataset card's split sizes, when it has them.
        splits = getattr(getattr(dataset, "info", None), "splits", None) or {}
        split = splits.get(self.spec.split or "train")
        examples = getattr(split, "num_examples", None)
        return examples if isinstance(examples, int) and examples > 0 else None


_READERS: dict[InputFormat, type[_Reader]] = {
    "json": _JsonReader,
    "parquet": _ParquetReader,
    "csv": _CsvReader,
    "hf": _HuggingFaceReader,
}
