"""``iterrefine ingest FILE|-``: send records to ``items.raw`` (a file, or stdin as it grows)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from iterrefine.cli.common import add_kafka_args, config_from_args, resolve_bootstrap
from iterrefine.config import Config
from iterrefine.ingest import Ingestor, IngestReport, RawRecord, read_records, stdin_records
from iterrefine.kafka import make_producer
from iterrefine.logging import configure_logging
from iterrefine.topics import TopicNames, ensure_topics


def register(subparsers: Any) -> None:  # argparse's _SubParsersAction is private
    parser = subparsers.add_parser(
        "ingest",
        help="send Alpaca/Dolly records to items.raw (FILE, or - for stdin, kept open)",
        description=(
            "Send every record to the pipeline's raw topic. Bad records are reported with "
            "their line number and still sent, so the score stage dead-letters them with a "
            "reason. With -, reads stdin until it closes (e.g. tail -F data.jsonl | "
            "iterrefine ingest -)."
        ),
    )
    parser.add_argument("source", metavar="FILE", help="JSON lines or JSON array file, or -")
    add_kafka_args(parser)
    parser.set_defaults(func=cmd_ingest)


async def _as_async(records: Iterable[RawRecord]) -> AsyncIterator[RawRecord]:
    for record in records:
        yield record


async def ingest(config: Config, bootstrap: str, records: AsyncIterator[RawRecord],
                 *, flush_every_s: float = 0.5) -> IngestReport:
    """Send ``records``; flush at least every ``flush_every_s`` so a slow stream still lands."""
    await ensure_topics(config.kafka, bootstrap)
    names = TopicNames(config.kafka.topic_prefix)
    producer = make_producer(config.kafka, bootstrap, linger_ms=config.runtime.linger_ms)
    await producer.start()
    try:
        ingestor = Ingestor(producer, names["items.raw"], names["items.dlq"],
                            max_item_bytes=config.runtime.max_item_bytes)
        loop = asyncio.get_running_loop()
        last_flush = loop.time()
        async for record in records:
            await ingestor.send(record)
            if loop.time() - last_flush > flush_every_s:
                await ingestor.flush()
                last_flush = loop.time()
        await ingestor.flush()
        return ingestor.report
    finally:
        await producer.stop()


def cmd_ingest(args: argparse.Namespace) -> int:
    configure_logging(json=args.log_json, level=args.log_level)
    config = config_from_args(args)
    bootstrap = resolve_bootstrap(config)
    source = stdin_records() if args.source == "-" else _as_async(read_records(Path(args.source)))
    report = asyncio.run(ingest(config, bootstrap, source))
    for problem in report.problems:
        print(f"bad record: {problem}", file=sys.stderr)
    print(f"ingested {report.records} records ({report.invalid} invalid, sent to be "
          f"dead-lettered) into {TopicNames(config.kafka.topic_prefix)['items.raw']}")
    return 0
