"""CSV rows as raw records: every row accounted for, none silently reinterpreted.

The file is read as bytes and decoded row by row, so one byte that is not UTF-8 fails
its own row (``invalid_utf8``), not the file. A row holds exactly the header's fields:
more or fewer would shift values between columns, so it is refused (``field_count``).
A field may be as long as a record can be; a row too big to travel is dead-lettered
as ``too_large`` with its head kept, and one the csv module cannot read at all
(a field over :data:`FIELD_LIMIT`) is refused as ``unreadable_row``, and reading goes
on at the next line. A refused row keeps the bytes the file had, and its own ``id``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import msgspec

from iterrefine.errors import ConfigError, ValidationError
from iterrefine.io.ingest import WIRE_LIMIT_BYTES, RawRecord
from iterrefine.item.records import given_id_of

#: The longest field the csv module builds (a row of it is then dead-lettered as
#: ``too_large``); the module's own default, 128 KiB, is below a record's 1 MiB.
FIELD_LIMIT = 16 * 1024 * 1024
#: How much of a row too big to travel its dead letter keeps.
_HEAD_BYTES = 64 * 1024
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_encoder = msgspec.json.Encoder()


class _Lines:
    """The file's lines, remembering the bytes of the row being read.

    Decoded as the csv module wants them (``newline=""``: ``\r``, ``\n`` and ``\r\n``
    end lines, quoted ones are kept), with ``surrogateescape``: a byte that is not UTF-8
    survives parsing, is found in its row, and encodes back to exactly the file's bytes.
    """

    def __init__(self, handle: BinaryIO) -> None:
        self._text = io.TextIOWrapper(handle, encoding="utf-8-sig", errors="surrogateescape",
                                      newline="")
        self.raw = bytearray()
        self.size = 0

    def __iter__(self) -> Iterator[str]:
        for line in self._text:
            data = line.encode("utf-8", "surrogateescape")
            self.size += len(data)
            room = _HEAD_BYTES + 1 - len(self.raw)
            if room > 0:
                self.raw += data[:room]
            yield line

    def take(self) -> tuple[bytes, int]:
        """The bytes (head) and size of the row just read; starts the next row."""
        raw, size = bytes(self.raw), self.size
        self.raw, self.size = bytearray(), 0
        return raw, size


def _not_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def csv_records(path: Path, origin: str) -> Iterator[RawRecord]:
    """Each data row of ``path`` as a raw record, numbered as a spreadsheet shows rows."""
    csv.field_size_limit(FIELD_LIMIT)  # process-wide, and only ever raised
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open("rb") as handle:
        if handle.read(2) in _UTF16_BOMS:
            raise ConfigError(f"{path} is UTF-16 text; save it as UTF-8 (the CSV reader "
                              "reads UTF-8, with or without a byte-order mark)")
        handle.seek(0)
        lines = _Lines(handle)
        reader = csv.reader(lines, delimiter=delimiter)
        header = _header(next(reader, None), path)
        lines.take()
        number = 1
        while True:
            number += 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raw, size = lines.take()
                yield _refused(raw, size, number, origin, None, ValidationError(
                    f"row {number} cannot be read as CSV: {exc}", reason="unreadable_row"))
                continue
            raw, size = lines.take()
            if not row:
                number -= 1  # an empty line is no row (as csv.DictReader skips it)
                continue
            if not any(field.strip() for field in row):
                continue  # a blank row (",,", spaces): nothing to curate or refuse
            yield _record(header, row, raw, size, number, origin)


def _header(row: list[str] | None, path: Path) -> list[str]:
    if not row or not any(name.strip() for name in row):
        raise ValueError("no header row")
    if any(_not_utf8(name) for name in row):
        raise ConfigError(f"the header row of {path} is not UTF-8 text; save the file as UTF-8")
    seen: set[str] = set()
    for name in row:
        if name in seen:
            raise ConfigError(f"the header row of {path} names column {name!r} twice: which "
                              "value counts would be a guess; rename one of them")
        seen.add(name)
    return row


def _record(header: list[str], row: list[str], raw: bytes, size: int, number: int,
            origin: str) -> RawRecord:
    fields = dict(zip(header, row, strict=False))
    own_id = given_id_of(fields)
    problem: ValidationError | None = None
    if len(row) != len(header):
        more = "more" if len(row) > len(header) else "fewer"
        problem = ValidationError(
            f"row {number} has {len(row)} fields, {more} than the header's {len(header)}: its "
            "values would land in the wrong columns (quote fields that hold the delimiter)",
            reason="field_count")
    elif any(_not_utf8(value) for value in row):
        column = next(name for name, value in fields.items() if _not_utf8(value))
        problem = ValidationError(f"row {number}: column {column!r} is not valid UTF-8",
                                  reason="invalid_utf8")
    elif size > WIRE_LIMIT_BYTES:
        problem = ValidationError(f"row {number} is {size} bytes; only its first "
                                  f"{_HEAD_BYTES} bytes are kept", reason="too_large")
    if problem is not None:
        return _refused(raw, size, number, origin, own_id, problem)
    return RawRecord(_encoder.encode(fields), number, origin)


def _refused(raw: bytes, size: int, number: int, origin: str, own_id: str | None,
             problem: ValidationError) -> RawRecord:
    problem.item_id = own_id
    head = raw[:_HEAD_BYTES]
    return RawRecord(head, number, origin, size=size if size > len(head) else None,
                     problem=problem)
