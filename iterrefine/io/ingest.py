"""Ingest: records from a file or a stream into ``items.raw``.

Every record goes to ``items.raw`` as its original bytes, good or bad: the raw
topic is the system of record, and the score stage dead-letters what does not
validate (with the reason), so nothing is dropped on the way in. Ingest only
reads each record once to give it its id as the message key (so every hop of
an item lands on the same partition) and to report bad lines early.

Two kinds of record go straight to the DLQ instead: one too big to be a Kafka
message, and one whose id this stream has already used (:mod:`iterrefine.io._duplicates`:
the first record wins). Every input line therefore ends in exactly one row of
the export, under a key of its own.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import structlog
from aiokafka import AIOKafkaProducer

from iterrefine.errors import ConfigError, ValidationError
from iterrefine.io._duplicates import Duplicate, FirstWins, bytes_fingerprint, content_fingerprint
from iterrefine.item.jsonguard import split_array
from iterrefine.item.model import DEFAULT_MAX_RAW_BYTES
from iterrefine.item.records import item_from_raw, raw_id
from iterrefine.kafka.idle import DOORBELLS
from iterrefine.observe.metrics import Metrics

log = structlog.get_logger("iterrefine.ingest")
#: Records above this cannot travel as one Kafka message (producer max_request_size is 4 MiB).
WIRE_LIMIT_BYTES = 1024 * 1024
_OVERSIZE_HEAD_BYTES = 64 * 1024
#: Editors on Windows start files with it; `cat a.jsonl b.jsonl` puts it mid-stream.
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One input record: its bytes and where it came from (for error messages)."""

    data: bytes
    line: int
    origin: str
    #: The full size when ``data`` holds only the head of an over-long stdin line.
    size: int | None = None
    #: Why the reader could not turn this record into JSON faithfully (a CSV row with
    #: extra fields, a byte that is not UTF-8, a binary column): ingest dead-letters it
    #: with this reason; ``data`` then holds the record as the file had it.
    problem: ValidationError | None = None

    @property
    def length(self) -> int:
        return len(self.data) if self.size is None else self.size


@dataclass
class IngestReport:
    records: int = 0
    invalid: int = 0
    #: Dead-lettered at ingest because their id was already taken (first wins).
    duplicate_ids: int = 0
    duplicate_records: int = 0
    #: The key of every record in ingest order, one per record (a duplicate or a repeated
    #: bad line gets a key of its own): what the run waits for. Left empty for an endless
    #: stream (``Ingestor(keep_ids=False)``), where it would only grow.
    ids: dict[str, None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def read_records(path: Path) -> Iterator[RawRecord]:
    """Records of a JSON-lines file, or of a file holding one JSON array.

    A file is a JSON array when its bytes are exactly one array (BOM and whitespace
    aside); a JSON-lines file whose first line happens to be an array is not one,
    and that line is a bad record like any other.
    """
    origin = path.name
    try:
        with path.open("rb") as handle:
            head = handle.read(4096).removeprefix(BOM).lstrip()
    except OSError as exc:
        raise ConfigError(f"cannot read input {path}: {exc.strerror}") from None
    if head.startswith(b"["):
        data = path.read_bytes().removeprefix(BOM)
        spans = split_array(data)
        if spans is not None:
            yield from json_array_records(data, spans, origin)
            return
        if head.split(b"\n", 1)[0].strip() == b"[":
            # A pretty-printed array that does not close: its lines are not records.
            raise ConfigError(
                f"{path} starts with a line '[' but is not one complete JSON array; "
                "use JSON lines (one record per line) to let bad records go to the DLQ"
            )
    with path.open("rb") as handle:
        yield from jsonl_records(handle, origin)


def json_array_records(
    data: bytes, spans: list[tuple[int, int]], origin: str
) -> Iterator[RawRecord]:
    """The elements of a JSON array file as their own bytes, numbered by starting line."""
    line, counted_to = 1, 0
    for start, end in spans:
        line += data.count(b"\n", counted_to, start)
        counted_to = start
        yield RawRecord(data[start:end], line, origin)


def jsonl_records(
    handle: BinaryIO, origin: str, *, max_line_bytes: int = WIRE_LIMIT_BYTES + 1
) -> Iterator[RawRecord]:
    """Non-blank lines of a JSON-lines file; each line is one record, good or bad.

    Lines end at ``\n`` only (a text holding U+2028 or U+0085 stays one line), lose
    surrounding whitespace (so CRLF files read the same) and a leading BOM. A line
    longer than ``max_line_bytes`` keeps only that much (and its full size), so it is
    dead-lettered as ``too_large`` without holding the whole line in memory.
    """
    number = 0
    while True:
        line = handle.readline(max_line_bytes)
        if not line:
            return
        number += 1
        size = len(line)
        if size == max_line_bytes and not line.endswith(b"\n"):
            while True:  # skip the rest of an over-long line
                rest = handle.readline(max_line_bytes)
                size += len(rest)
                if not rest or rest.endswith(b"\n"):
                    break
        if size > len(line):
            yield RawRecord(line, number, origin, size=size)
            continue
        stripped = line.strip().removeprefix(BOM).strip()
        if stripped:
            yield RawRecord(stripped, number, origin)


async def stdin_records(
    stop: asyncio.Event | None = None, *, max_line_bytes: int = WIRE_LIMIT_BYTES + 1
) -> AsyncIterator[RawRecord]:
    """Lines from stdin as they arrive (``tail -F file | iterrefine ingest -``), until EOF.

    A line longer than ``max_line_bytes`` keeps only that much (and its full size), so
    it is dead-lettered as ``too_large`` instead of holding the whole line in memory.
    ``stop`` ends the stream early (SIGTERM); a partial last line is then dropped, logged.
    """
    if stat.S_ISREG(os.fstat(sys.stdin.fileno()).st_mode):
        # `ingest - < file`: the event loop has no pipe transport for regular files.
        for record in jsonl_records(sys.stdin.buffer, "stdin", max_line_bytes=max_line_bytes):
            yield record
        return
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        async for record in chunked_lines(_stoppable(reader, stop), "stdin",
                                          max_line_bytes=max_line_bytes):
            yield record
    finally:
        transport.close()


async def _stoppable(reader: asyncio.StreamReader, stop: asyncio.Event | None,
                     chunk_bytes: int = 64 * 1024) -> AsyncIterator[bytes]:
    """Chunks of ``reader`` until EOF (then a final ``b""``) or until ``stop`` is set."""
    while stop is None or not stop.is_set():
        if stop is None:
            chunk = await reader.read(chunk_bytes)
        else:
            read = asyncio.ensure_future(reader.read(chunk_bytes))
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({read, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not read.done():
                read.cancel()
                return  # stopped: no final b"", so a partial line is not taken for a whole one
            chunk = read.result()
        yield chunk
        if not chunk:
            return


async def chunked_lines(
    chunks: AsyncIterator[bytes], origin: str, *, max_line_bytes: int
) -> AsyncIterator[RawRecord]:
    """Non-blank lines of a byte stream (``b""`` marks its end); over-long lines are cut."""
    number, line, size = 0, bytearray(), 0
    async for chunk in chunks:
        if not chunk:  # end of stream: the last line needs no newline
            if line.strip():
                yield _stream_record(line, size, number + 1, origin)
            return
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            room = max_line_bytes - len(line)
            if room > 0:
                line += piece[:room]
            size += len(piece)
            if end < 0:
                break
            number += 1
            if line.strip():
                yield _stream_record(line, size, number, origin)
            line, size, start = bytearray(), 0, end + 1
    if line.strip():
        log.warning("partial_line_dropped", origin=origin, line=number + 1, bytes=size)


def _stream_record(line: bytearray, size: int, number: int, origin: str) -> RawRecord:
    truncated = size > len(line)
    data = bytes(line) if truncated else bytes(line).strip().removeprefix(BOM).strip()
    return RawRecord(data, number, origin, size=size if truncated else None)


def key_for(record: RawRecord, *, max_bytes: int) -> tuple[str, ValidationError | None]:
    """The item id the pipeline will use for ``record`` (a hash of the bytes if invalid)."""
    item_id, _, problem = inspect_record(record, max_bytes=max_bytes)
    return item_id, problem


def inspect_record(
    record: RawRecord, *, max_bytes: int
) -> tuple[str, bytes, ValidationError | None]:
    """(id, content fingerprint, problem): what ingest needs to key and de-duplicate.

    A record that fails keeps its own id when it has a valid one (README "Ids").
    """
    if record.problem is not None:
        problem = record.problem
        return problem.item_id or raw_id(record.data), bytes_fingerprint(record.data), problem
    if record.size is not None and record.size > max_bytes:  # only its head was read
        return raw_id(record.data), bytes_fingerprint(record.data), ValidationError(
            f"record is {record.size} bytes, over the {max_bytes}-byte limit", reason="too_large")
    try:
        item = item_from_raw(record.data, max_bytes=max_bytes)
    except ValidationError as exc:
        return exc.item_id or raw_id(record.data), bytes_fingerprint(record.data), exc
    return item.id, content_fingerprint(item.original), None


class Ingestor:
    """Sends raw records to ``items.raw``; waits for broker acks in batches (backpressure)."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        dlq_topic: str,
        *,
        max_item_bytes: int = DEFAULT_MAX_RAW_BYTES,
        batch_size: int = 500,
        keep_ids: bool = True,
        on_problem: Callable[[str], None] | None = None,
        metrics: Metrics | None = None,
        on_id: Callable[[str], None] | None = None,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._dlq_topic = dlq_topic
        self._max_bytes = max_item_bytes
        self._batch_size = batch_size
        self._keep_ids = keep_ids
        self._on_problem = on_problem
        self._metrics = metrics
        #: Told each record's key before it is sent (a watcher must know it before it arrives).
        self._on_id = on_id
        self._pending: list[asyncio.Future[object]] = []
        self._first_wins = FirstWins()
        self.report = IngestReport()

    async def send(self, record: RawRecord) -> str:
        """Send ``record``; return the key it went under (its item id, or its DLQ row's id)."""
        item_id, fingerprint, problem = inspect_record(record, max_bytes=self._max_bytes)
        self.report.records += 1
        where = f"{record.origin}:{record.line}"
        duplicate: Duplicate | None = None
        if problem is not None:
            self.report.invalid += 1
            if item_id in self._first_wins:  # its id (or bytes) taken: a row of its own
                item_id = raw_id(where.encode() + b"\0" + record.data)
            self._first_wins.check(item_id, fingerprint, record.origin, record.line)
            self._tell(f"{where}: {problem} (sent to the DLQ)")
            log.warning("invalid_record", origin=record.origin, line=record.line,
                        reason=problem.reason, item_id=item_id)
        else:
            duplicate = self._first_wins.check(item_id, fingerprint, record.origin, record.line)
        headers = [
            ("iterrefine.ingest.origin", record.origin.encode()),
            ("iterrefine.ingest.line", str(record.line).encode()),
        ]
        topic, value = self._topic, record.data
        if duplicate is not None:
            self.report.duplicate_ids = self._first_wins.duplicate_ids
            self.report.duplicate_records = self._first_wins.duplicate_records
            self._tell(f"{where}: {duplicate.message} (sent to the DLQ)")
            log.warning("duplicate_record", origin=record.origin, line=record.line,
                        reason=duplicate.reason, item_id=item_id)
            item_id = duplicate.row_id
            topic = self._dlq_topic
            headers += _ingest_dead_letter(duplicate.reason, duplicate.message)
            self._count_dead_letter(duplicate.reason)
        elif record.problem is not None:
            # The reader's verdict: the bytes alone (maybe valid JSON) would not show it.
            topic, value = self._dlq_topic, value[:_OVERSIZE_HEAD_BYTES]
            headers += _ingest_dead_letter(record.problem.reason, str(record.problem))
            self._count_dead_letter(record.problem.reason)
        elif record.length > WIRE_LIMIT_BYTES:
            # Too big for a Kafka message: dead-letter its head right away, with the reason.
            topic, value = self._dlq_topic, value[:_OVERSIZE_HEAD_BYTES]
            headers += _ingest_dead_letter(
                "too_large", f"record is {record.length} bytes; only its first "
                f"{_OVERSIZE_HEAD_BYTES} bytes are kept")
            self._count_dead_letter("too_large")
        log.debug("record_ingested", origin=record.origin, line=record.line, item_id=item_id,
                  topic=topic)
        if self._keep_ids:
            self.report.ids.setdefault(item_id, None)
        if self._on_id is not None:
            self._on_id(item_id)
        future = await self._producer.send(topic, value, key=item_id.encode(), headers=headers)
        DOORBELLS.ring(topic)
        self._pending.append(future)
        if len(self._pending) >= self._batch_size:
            await self.flush()
        elif _is_power_of_two(self.report.records):
            # aiokafka's send() returns without yielding while its buffer has room: a loop
            # of sends kept the producer's sender from running, so the first records left
            # only when the loop flushed (the score stage began 0.1 s after ingest started
            # on 200 records). Yielding after record 1, 2, 4, ... lets the first ones go at
            # once; later ones still leave in big batches at each flush (yielding every 16
            # records made batches of a few records: on a disk broker each is an object,
            # and a 200,000-record run took 1.9x as long).
            await asyncio.sleep(0)
        return item_id

    def _count_dead_letter(self, reason: str) -> None:
        """Dead letters written by ingest itself show in the DLQ metric like a stage's."""
        if self._metrics is not None:
            self._metrics.dlq_total.labels("ingest", reason).inc()

    def _tell(self, message: str) -> None:
        if len(self.report.problems) < 100:
            self.report.problems.append(message)
        if self._on_problem is not None:
            self._on_problem(message)

    async def flush(self) -> None:
        """Wait until the broker acknowledged everything sent so far; raise a delivery error."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            # Unlike gather, wait leaves the sends alone if this flush is cancelled.
            await asyncio.wait(pending)
        except asyncio.CancelledError:
            self._pending = pending + self._pending  # still to be confirmed by the next flush
            raise
        for future in pending:
            future.result()


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _ingest_dead_letter(reason: str, message: str) -> list[tuple[str, bytes]]:
    """The DLQ headers of a record dead-lettered by ingest itself (see runtime.dlq)."""
    return [
        ("iterrefine.stage", b"ingest"),
        ("iterrefine.reason", reason.encode()),
        ("iterrefine.error", b"ValidationError"),
        ("iterrefine.message", message.encode("utf-8", "replace")),
        ("iterrefine.attempts", b"1"),
        ("iterrefine.revision", b"0"),
    ]
