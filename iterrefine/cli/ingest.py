"""``iterrefine ingest FILE|-``: send records to ``items.raw`` (a file, or stdin as it grows)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from iterrefine.cli.common import add_kafka_args, config_from_args, resolve_bootstrap
from iterrefine.config import Config
from iterrefine.io.ingest import Ingestor, IngestReport, RawRecord, stdin_records
from iterrefine.io.inputs import (
    FORMATS_HELP,
    INPUT_FORMATS,
    InputFormat,
    InputSpec,
    open_input,
)
from iterrefine.kafka.clients import make_producer
from iterrefine.kafka.topics import TopicNames, ensure_topics
from iterrefine.observe.logging import configure_logging
from iterrefine.runtime.serve import install_stop_signals


def register(subparsers: Any) -> None:  # argparse's _SubParsersAction is private
    parser = subparsers.add_parser(
        "ingest",
        help="send Alpaca/Dolly records to items.raw (FILE, or - for stdin, kept open)",
        description=(
            "Send every record to the pipeline's raw topic. Bad records are reported with "
            "their line number and still sent, so the score stage dead-letters them with a "
            "reason. A record reusing an id seen earlier in the same input goes to the DLQ "
            "(duplicate_id / duplicate_record: the first one wins). With -, reads stdin as it "
            "grows until it closes or SIGTERM/SIGINT (e.g. tail -F data.jsonl | iterrefine "
            "ingest -), confirming each batch with the broker before reading on, and at least "
            "every 0.5 s while the stream is idle."
        ),
    )
    parser.add_argument("source", metavar="FILE", help="an input file (JSON lines, JSON array, "
                        "Parquet, CSV, saved HF dataset), or - for JSON lines on stdin")
    parser.add_argument("--input-format", choices=INPUT_FORMATS, help=FORMATS_HELP)
    add_kafka_args(parser)
    parser.set_defaults(func=cmd_ingest)


async def _as_async(records: Iterable[RawRecord]) -> AsyncIterator[RawRecord]:
    for record in records:
        yield record


async def ingest(
    config: Config,
    bootstrap: str,
    records: AsyncIterator[RawRecord],
    *,
    flush_every_s: float = 0.5,
    keep_ids: bool = True,
    on_problem: Callable[[str], None] | None = None,
) -> IngestReport:
    """Send ``records``, waiting for acks every 500 records (backpressure on the source).

    A slow stream is also confirmed at least every ``flush_every_s`` while it is
    idle, so a delivery error shows up even when no further line arrives.
    """
    await ensure_topics(config.kafka, bootstrap)
    names = TopicNames(config.kafka.topic_prefix)
    producer = make_producer(config.kafka, bootstrap, linger_ms=config.runtime.linger_ms)
    await producer.start()
    try:
        ingestor = Ingestor(producer, names["items.raw"], names["items.dlq"],
                            max_item_bytes=config.runtime.max_item_bytes, keep_ids=keep_ids,
                            on_problem=on_problem)
        flusher = asyncio.create_task(_flush_every(ingestor, flush_every_s))
        try:
            async for record in records:
                await ingestor.send(record)
                if flusher.done():
                    flusher.result()  # a delivery error: stop here, with its message
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        await ingestor.flush()
        return ingestor.report
    finally:
        await producer.stop()


async def _flush_every(ingestor: Ingestor, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        await ingestor.flush()


async def _ingest_command(
    config: Config, bootstrap: str, source: str, input_format: InputFormat | None = None
) -> IngestReport:
    def problem(message: str) -> None:
        print(f"bad record: {message}", file=sys.stderr, flush=True)

    stop = asyncio.Event()
    if source == "-":
        install_stop_signals(stop)  # SIGTERM/SIGINT: stop reading, confirm what was sent
        records = stdin_records(stop)
    else:
        records = _as_async(open_input(InputSpec(source, format=input_format)).records())
    return await ingest(config, bootstrap, records, keep_ids=False, on_problem=problem)


def cmd_ingest(args: argparse.Namespace) -> int:
    configure_logging(json=args.log_json, level=args.log_level)
    config = config_from_args(args)
    bootstrap = resolve_bootstrap(config)
    report = asyncio.run(_ingest_command(config, bootstrap, args.source, args.input_format))
    print(f"ingested {report.records} records ({report.invalid} invalid, sent to be "
          f"dead-lettered) into {TopicNames(config.kafka.topic_prefix)['items.raw']}")
    duplicates = report.duplicate_ids + report.duplicate_records
    if duplicates:
        print(f"{duplicates} records reused an id seen earlier in this input and went to the "
              f"DLQ ({report.duplicate_ids} duplicate_id, {report.duplicate_records} "
              "duplicate_record); the first record with each id is processed")
    return 0
