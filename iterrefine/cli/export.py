"""``iterrefine export -o FILE``: the terminal topics as files, newest revision per item."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from iterrefine.app import exit_codes
from iterrefine.cli.common import add_kafka_args, config_from_args, resolve_bootstrap
from iterrefine.config import Config
from iterrefine.io.completeness import Completeness, read_pipeline
from iterrefine.io.outputs import SHAPES, Shape, check_output, output_paths, write_outputs
from iterrefine.observe.logging import configure_logging


def register(subparsers: Any) -> None:  # argparse's _SubParsersAction is private
    parser = subparsers.add_parser(
        "export",
        help="write curated/rejected/dlq items from the topics to files (deduplicated)",
        description=(
            "Read items.curated, items.rejected and items.dlq from the beginning and write one "
            "row per item id (its newest revision) to FILE, FILE's .rejected.jsonl and "
            ".dlq.jsonl. Counts are items (distinct ids): repeated records (at-least-once "
            "redelivery) and older revisions (replays) are counted apart and left out. "
            "Exits 3 when items ingested into items.raw have not all reached a terminal topic "
            "yet: the files then hold those that have, and the message says how many are "
            "missing and in which topics they are."
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
) -> tuple[dict[str, int], Completeness]:
    """Write the newest record of every item id; the counts written and the pipeline's."""
    from iterrefine.app.pipeline import load_graph, pipeline_topics

    selection, completeness = await read_pipeline(
        config.kafka, bootstrap, pipeline_topics(config, load_graph(config)))
    _, counts = write_outputs(selection.by_id.values(), output, shape=shape)
    return counts, completeness


def cmd_export(args: argparse.Namespace) -> int:
    configure_logging(json=args.log_json, level=args.log_level)
    config = config_from_args(args)
    check_output(args.output, args.shape)
    counts, done = asyncio.run(
        export(config, resolve_bootstrap(config), args.output, args.shape))
    paths = output_paths(args.output)
    print(f"curated {counts['curated']} → {paths.curated}\nrejected {counts['rejected']} → "
          f"{paths.rejected}\ndlq {counts['dlq']} → {paths.dlq}\n"
          f"items: {done.finished} of {done.ingested} ingested finished; left out "
          f"{done.duplicates} repeated records (at-least-once redelivery) and "
          f"{done.superseded} older revisions (replays)")
    if not done.complete:
        print(f"iterrefine: export incomplete: {done.describe_missing()}; the files hold the "
              f"{done.finished} finished; exit code {exit_codes.EXPORT_INCOMPLETE}",
              file=sys.stderr)
        return exit_codes.EXPORT_INCOMPLETE
    return exit_codes.OK
