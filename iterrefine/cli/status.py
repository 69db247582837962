"""``iterrefine status``: per-stage lag, in-flight, rate and rounds of a running pipeline."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any

import msgspec
from rich.console import Console
from rich.table import Table

from iterrefine.cli.cache import describe_cache
from iterrefine.cli.common import add_kafka_args, config_from_args, resolve_bootstrap
from iterrefine.llm.cache import read_stats
from iterrefine.observe.logging import configure_logging

if TYPE_CHECKING:
    from iterrefine.tools.status import PipelineStatus


def register(subparsers: Any) -> None:  # argparse's _SubParsersAction is private
    parser = subparsers.add_parser(
        "status",
        help="per-stage lag, in-flight, items/s and rounds of a running pipeline",
        description=(
            "Show, for each stage's consumer group, its committed offsets against the true end "
            "of its input topic (lag), and the pipeline in items: distinct ids ingested and "
            "finished per terminal topic, repeated records (at-least-once redelivery) counted "
            "apart, and where unfinished items are. With --metrics, also in-flight messages, "
            "items/s (two scrapes --interval-s apart), the refinement rounds distribution and "
            "the workers' LLM cache hits from their /metrics endpoints. Exits 1 when an "
            "endpoint could not be scraped."
        ),
    )
    parser.add_argument(
        "--metrics", metavar="URL[,URL...]", action="append", default=[],
        help="worker /metrics endpoints (host:port or URLs; comma-separated or repeated)",
    )
    parser.add_argument("--interval-s", type=float, default=1.0,
                        help="seconds between the two scrapes the rates come from (1)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_kafka_args(parser)
    parser.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    from iterrefine.app.pipeline import load_graph
    from iterrefine.tools.status import (
        pipeline_status,  # aiokafka and aiohttp only for this command
    )

    configure_logging(json=args.log_json, level=args.log_level)
    config = config_from_args(args)
    urls = [u for value in args.metrics for u in value.split(",") if u.strip()]
    status = asyncio.run(pipeline_status(
        config.kafka, resolve_bootstrap(config), stage_inputs=load_graph(config).inputs(),
        metrics_urls=urls, interval_s=args.interval_s,
    ))
    cache = read_stats(config.cache_path())
    if args.json:
        print(json.dumps({**msgspec.to_builtins(status),
                          "llm_cache": msgspec.to_builtins(cache)}, indent=2))
    else:
        print_status(Console(), status)
        Console().print(describe_cache(cache, config.cache_path()))
    for error in status.metrics_errors:
        print(f"iterrefine: cannot scrape {error}", file=sys.stderr)
    return 1 if status.metrics_errors else 0


def _number(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if value != int(value) else str(int(value))


def print_status(console: Console, status: PipelineStatus) -> None:
    table = Table(title=f"iterrefine pipeline {status.topic_prefix}*")
    for name in ("stage", "input topic"):
        table.add_column(name)
    for name in ("end", "committed", "lag", "in-flight", "items/s"):
        table.add_column(name, justify="right")
    for stage in status.stages:
        table.add_row(
            stage.stage, stage.topic, str(stage.end), str(stage.committed),
            f"[bold red]{stage.lag}[/]" if stage.lag else "0",
            _number(stage.inflight, 0), _number(stage.items_per_s, 1),
        )
    console.print(table)
    items = status.items
    if items is None:
        console.print("terminal topics (records): " + ", ".join(
            f"{name.removeprefix('items.')} {count}" for name, count in status.terminal.items()))
    else:
        console.print(f"items: {items.finished} of {items.ingested} ingested finished ("
                      + ", ".join(f"{name.removeprefix('items.')} {count}"
                                  for name, count in items.items.items())
                      + f"); {items.duplicates} repeated records (at-least-once redelivery) "
                      f"and {items.superseded} older revisions not counted")
        if not items.complete:
            console.print(f"[bold]{items.describe_missing()}[/]")
    if status.cache is not None:
        console.print("workers' LLM cache (live): " + (", ".join(
            f"{role} {int(r.get('hit', 0))} hits, {int(r.get('miss', 0))} misses"
            for role, r in sorted(status.cache.items())) or "no lookups yet"))
    if status.rounds is not None:
        for outcome in ("converged", "exhausted"):
            rounds = status.rounds.get(outcome, {})
            shown = ", ".join(f"{r} round(s): {n}" for r, n in rounds.items()) or "-"
            console.print(f"refinement rounds ({outcome}): {shown}")
    if status.rate_window_s is not None:
        console.print(f"rates over {status.rate_window_s} s from "
                      f"{len(status.metrics_endpoints)} endpoint(s)", style="dim")
