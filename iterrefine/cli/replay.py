"""``iterrefine replay``: re-feed a range of a topic into the pipeline.

The mechanism is :mod:`iterrefine.tools.replay`.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from iterrefine.app.pipeline import load_graph
from iterrefine.cli.common import add_kafka_args, config_from_args, resolve_bootstrap
from iterrefine.consumers import STAGE_NAMES
from iterrefine.observe.logging import configure_logging
from iterrefine.tools.replay import ReplayRange, describe_ranges, parse_time_ms, replay


def register(subparsers: Any) -> None:  # argparse's _SubParsersAction is private
    parser = subparsers.add_parser(
        "replay",
        help="re-feed a range of a topic into the pipeline (re-score, re-align, ...)",
        description=(
            "Read a range of TOPIC (by offset or time, without touching the workers' consumer "
            "groups) and send it to the input topic of the stage that consumes TOPIC, or of "
            "--to STAGE. The running workers process it under their current config and prompt "
            "version; every replayed item gets a newer revision, so `iterrefine export` shows "
            "the new result in place of the old one. The answers come from the workers' LLM "
            "response cache unless they run with --cache refresh: a question asked before "
            "(same prompt, model and settings) is answered from disk, unpaid, with the same "
            "answer, so a replay under an unchanged config gives the same results; a new "
            "prompt version or model asks anew. Examples: --topic items.raw --since "
            "2026-05-01T00:00:00Z re-scores everything ingested since then; --topic "
            "items.curated --from-offset 0 --to align re-aligns every refined item."
        ),
    )
    add = parser.add_argument
    add("--topic", required=True, metavar="TOPIC",
        help="topic to read, e.g. items.raw (the configured prefix is optional)")
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument("--from-offset", type=int, metavar="N",
                       help="start at offset N of every partition (0: from the beginning)")
    start.add_argument("--since", metavar="ISO-TIME",
                       help="start at records with a timestamp at or after this time "
                       "(ISO 8601; UTC unless a zone is given)")
    add("--until", metavar="ISO-TIME", help="stop before records with a timestamp at or after "
        "this time (default: where the topic ends now)")
    add("--to", metavar="STAGE",
        help=f"stage to feed ({', '.join(STAGE_NAMES)}, or a stage of the config); default: "
        "the stage that consumes TOPIC. Needed for terminal topics, e.g. items.curated --to align")
    add("--partition", type=int, action="append", metavar="P",
        help="only this partition (repeatable; default: all)")
    add("--dry-run", action="store_true", help="count what would be replayed, send nothing")
    add_kafka_args(parser)
    parser.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    configure_logging(json=args.log_json, level=args.log_level)
    config = config_from_args(args)
    wanted = ReplayRange(
        from_offset=args.from_offset,
        since_ms=parse_time_ms(args.since) if args.since else None,
        until_ms=parse_time_ms(args.until) if args.until else None,
        partitions=tuple(args.partition) if args.partition else None,
    )
    bootstrap = resolve_bootstrap(config)
    report = asyncio.run(replay(
        config.kafka, bootstrap, args.topic, wanted, graph=load_graph(config), to_stage=args.to,
        max_envelope_bytes=config.runtime.max_envelope_bytes, dry_run=args.dry_run,
    ))
    verb = "would replay" if args.dry_run else "replayed"
    ranges = ", ".join(describe_ranges(report.ranges)) or "nothing in range"
    print(f"{verb} {report.sent} of {report.read} records read from {report.source} "
          f"({ranges}) into {report.target} (stage {report.stage}); "
          f"{len(report.ids)} items")
    if report.skipped:
        print("skipped: " + ", ".join(f"{reason} {n}" for reason, n in
                                      sorted(report.skipped.items())))
    if report.sent and not args.dry_run:
        print(f"running `iterrefine worker {report.stage}` processes pick them up (questions "
              "asked before are answered from their LLM cache unless they run with --cache "
              "refresh); `iterrefine export` keeps the newest revision of each item")
    return 0
