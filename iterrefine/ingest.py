"""Ingest: records from a file or a stream into ``items.raw``.

Every record goes to ``items.raw`` as its original bytes, good or bad: the raw
topic is the system of record, and the score stage dead-letters what does not
validate (with the reason), so nothing is dropped on the way in. Ingest only
reads each record once to give it its id as the message key (so every hop of
an item lands on the same partition) and to report bad lines early.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterable, Iterator
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


@dataclass
class IngestReport:
    records: int = 0
    invalid: int = 0
    #: Ids in ingest order (duplicates kept once): what the run waits for.
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


async def stdin_records() -> AsyncIterator[RawRecord]:
    """Lines from stdin as they arrive (``tail -F file | iterrefine ingest -``)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    number = 0
    while line := await reader.readline():
        number += 1
        if line.strip():
            yield RawRecord(line.strip(), number, "stdin")


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
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._dlq_topic = dlq_topic
        self._max_bytes = max_item_bytes
        self._batch_size = batch_size
        self._pending: list[asyncio.Future[object]] = []
        self.report = IngestReport()

    async def send(self, record: RawRecord) -> str:
        item_id, problem = key_for(record, max_bytes=self._max_bytes)
        self.report.records += 1
        self.report.ids.setdefault(item_id, None)
        if problem is not None:
            self.report.invalid += 1
            message = f"{record.origin}:{record.line}: {problem} (sent to the DLQ)"
            if len(self.report.problems) < 100:
                self.report.problems.append(message)
            log.warning("invalid_record", origin=record.origin, line=record.line,
                        reason=problem.reason, item_id=item_id)
        headers = [
            ("iterrefine.ingest.origin", record.origin.encode()),
            ("iterrefine.ingest.line", str(record.line).encode()),
        ]
        topic, value = self._topic, record.data
        if len(value) > WIRE_LIMIT_BYTES:
            # Too big for a Kafka message: dead-letter its head right away, with the reason.
            topic, value = self._dlq_topic, value[:_OVERSIZE_HEAD_BYTES]
            headers += [
                ("iterrefine.stage", b"ingest"),
                ("iterrefine.reason", b"too_large"),
                ("iterrefine.error", b"ValidationError"),
                ("iterrefine.message", f"record is {len(record.data)} bytes; only its first "
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
        """Wait until the broker acknowledged everything sent so far."""
        pending, self._pending = self._pending, []
        if pending:
            await asyncio.gather(*pending)
