"""``iterrefine export -o FILE``: the terminal topics as files, newest revision per item."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from iterrefine.cli.common import add_kafka_args, config_from_args, resolve_bootstrap
from iterrefine.config import Config
from iterrefine.io.export import Selection, outcome_of_topic, terminal_of
from iterrefine.io.outputs import SHAPES, Shape, check_output, output_paths, write_outputs
from iterrefine.kafka.clients import read_to_end
from iterrefine.kafka.topics import TopicNames
from iterrefine.observe.logging import configure_logging


def register(subparsers: Any) -> None:  # argparse's _SubParsersAction is private
    parser = subparsers.add_parser(
        "export",
        help="write curated/rejected/dlq items from the topics to files (deduplicated)",
        description=(
            "Read items.curated, items.rejected and items.dlq from the beginning and write one "
            "row per item id (its newest revision) to FILE, FILE's .rejected.jsonl and "
            ".dlq.jsonl."
        ),
    )
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="FILE",
                        help=".jsonl or .parquet (by name); rejected and DLQ files beside it")
    parser.add_argument("--shape", choices=SHAPES, default="full",
                        help="full (with lineage, default), or training-ready alpaca, messages, "
                        "sharegpt")
    add_kafka_args(parser)
    parser.set_defaults(func=cmd_export)


async def export(
    config: Config, bootstrap: str, output: Path, shape: Shape = "full"
) -> tuple[dict[str, int], int]:
    names = TopicNames(config.kafka.topic_prefix)
    records = await read_to_end(config.kafka, bootstrap, names.terminal())
    selection = Selection()
    for record in sorted(records, key=lambda r: r.timestamp):
        selection.offer(terminal_of(record, outcome_of_topic(names, record.topic)))
    _, counts = write_outputs(selection.by_id.values(), output, shape=shape)
    return counts, selection.duplicates


def cmd_export(args: argparse.Namespace) -> int:
    configure_logging(json=args.log_json, level=args.log_level)
    config = config_from_args(args)
    check_output(args.output, args.shape)
    counts, duplicates = asyncio.run(
        export(config, resolve_bootstrap(config), args.output, args.shape))
    paths = output_paths(args.output)
    print(f"curated {counts['curated']} → {paths.curated}\nrejected {counts['rejected']} → "
          f"{paths.rejected}\ndlq {counts['dlq']} → {paths.dlq}\n"
          f"({duplicates} duplicate or superseded records removed)")
    return 0
