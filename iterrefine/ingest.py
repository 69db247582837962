"""Ingest: records from a file or a stream into ``items.raw``.

Every record goes to ``items.raw`` as its original bytes, good or bad: the raw
topic is the system of record, and the score stage dead-letters what does not
validate (with the reason), so nothing is dropped on the way in. Ingest only
reads each record once to give it its id as the message key (so every hop of
an item lands on the same partition) and to report bad lines early.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import structlog
from aiokafka import AIOKafkaProducer

from iterrefine.errors import ConfigError, ValidationError
from iterrefine.model import DEFAULT_MAX_RAW_BYTES, item_from_raw, raw_id

log = structlog.get_logger("iterrefine.ingest")
#: Records above this cannot travel as one Kafka message (producer max_request_size is 4 MiB).
WIRE_LIMIT_BYTES = 1024 * 1024
_OVERSIZE_HEAD_BYTES = 64 * 1024
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One input record: its bytes and where it came from (for error messages)."""

    data: bytes
    line: int
    origin: str
    #: The full size when ``data`` holds only the head of an over-long stdin line.
    size: int | None = None

    @property
    def length(self) -> int:
        return len(self.data) if self.size is None else self.size


@dataclass
class IngestReport:
    records: int = 0
    invalid: int = 0
    #: Ids in ingest order (duplicates kept once): what the run waits for. Left empty
    #: for an endless stream (``Ingestor(keep_ids=False)``), where it would only grow.
    ids: dict[str, None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def duplicate_ids(self) -> int:
        return self.records - len(self.ids)


def read_records(path: Path) -> Iterator[RawRecord]:
    """Records of a JSON-lines file, or of a file holding one JSON array."""
    origin = path.name
    try:
        with path.open("rb") as handle:
            head = handle.read(4096).lstrip()
    except OSError as exc:
        raise ConfigError(f"cannot read input {path}: {exc.strerror}") from None
    if head.startswith(b"["):
        try:
            records = msgspec.json.decode(path.read_bytes())
        except msgspec.DecodeError as exc:
            raise ConfigError(
                f"{path} starts with '[' but is not a valid JSON array ({exc}); "
                "use JSON lines (one record per line) to let bad records go to the DLQ"
            ) from None
        for index, record in enumerate(records, start=1):
            yield RawRecord(_encoder.encode(record), index, origin)
        return
    with path.open("rb") as handle:
        yield from _lines(handle, origin)


def _lines(handle: Iterable[bytes], origin: str) -> Iterator[RawRecord]:
    for number, line in enumerate(handle, start=1):
        stripped = line.strip()
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
        for record in _lines(sys.stdin.buffer, "stdin"):
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
    data = bytes(line) if truncated else bytes(line).strip()
    return RawRecord(data, number, origin, size=size if truncated else None)


def key_for(record: RawRecord, *, max_bytes: int) -> tuple[str, ValidationError | None]:
    """The item id the pipeline will use for ``record`` (a hash of the bytes if invalid)."""
    try:
        return item_from_raw(record.data, max_bytes=max_bytes).id, None
    except ValidationError as exc:
        return raw_id(record.data), exc


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
        on_id: Callable[[str], None] | None = None,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._dlq_topic = dlq_topic
        self._max_bytes = max_item_bytes
        self._batch_size = batch_size
        self._keep_ids = keep_ids
        self._on_problem = on_problem
        #: Told each record's id before it is sent (a watcher must know it before it arrives).
        self._on_id = on_id
        self._pending: list[asyncio.Future[object]] = []
        self.report = IngestReport()

    async def send(self, record: RawRecord) -> str:
        item_id, problem = key_for(record, max_bytes=self._max_bytes)
        self.report.records += 1
        if self._keep_ids:
            self.report.ids.setdefault(item_id, None)
        if self._on_id is not None:
            self._on_id(item_id)
        if problem is not None:
            self.report.invalid += 1
            message = f"{record.origin}:{record.line}: {problem} (sent to the DLQ)"
            if len(self.report.problems) < 100:
                self.report.problems.append(message)
            if self._on_problem is not None:
                self._on_problem(message)
            log.warning("invalid_record", origin=record.origin, line=record.line,
                        reason=problem.reason, item_id=item_id)
        headers = [
            ("iterrefine.ingest.origin", record.origin.encode()),
            ("iterrefine.ingest.line", str(record.line).encode()),
        ]
        topic, value = self._topic, record.data
        if record.length > WIRE_LIMIT_BYTES:
            # Too big for a Kafka message: dead-letter its head right away, with the reason.
            topic, value = self._dlq_topic, value[:_OVERSIZE_HEAD_BYTES]
            headers += [
                ("iterrefine.stage", b"ingest"),
                ("iterrefine.reason", b"too_large"),
                ("iterrefine.error", b"ValidationError"),
                ("iterrefine.message", f"record is {record.length} bytes; only its first "
                 f"{_OVERSIZE_HEAD_BYTES} bytes are kept".encode()),
                ("iterrefine.attempts", b"1"),
                ("iterrefine.revision", b"0"),
            ]
        future = await self._producer.send(topic, value, key=item_id.encode(), headers=headers)
        self._pending.append(future)
        if len(self._pending) >= self._batch_size:
            await self.flush()
        return item_id

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
