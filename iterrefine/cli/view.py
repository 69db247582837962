"""``iterrefine view``: browse an export (or the terminal topics) in a local web page."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

from iterrefine.cli.common import add_kafka_args
from iterrefine.cli.show import load_stories
from iterrefine.observe.logging import configure_logging
from iterrefine.tools.viewer import Viewer


def register(subparsers: Any) -> None:  # argparse's _SubParsersAction is private
    parser = subparsers.add_parser(
        "view",
        help="a local web viewer: filter items, original vs refined, diffs, judge's reasons",
        description=(
            "Serve a viewer on http://127.0.0.1:PORT/ over an export in the full shape "
            "(--from FILE, .jsonl or .parquet, with its rejected and DLQ files beside it) or, "
            "without --from, the terminal topics as they are now. Ctrl-C stops it."
        ),
    )
    parser.add_argument("--from", dest="source", metavar="EXPORT_FILE", type=Path)
    # Not 8765: `iterrefine sim-llm` listens there, and both run side by side.
    parser.add_argument("--port", type=int, default=8766, help="port on 127.0.0.1 (8766)")
    add_kafka_args(parser)
    parser.set_defaults(func=cmd_view)


def cmd_view(args: argparse.Namespace) -> int:
    configure_logging(json=args.log_json, level=args.log_level)
    stories = list(load_stories(args))
    source = str(args.source) if args.source is not None else "the terminal topics"

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with Viewer(stories, source=source, port=args.port) as viewer:
            print(f"iterrefine view: {len(stories)} items at {viewer.url} (Ctrl-C stops)",
                  file=sys.stderr, flush=True)
            await stop.wait()

    asyncio.run(serve())
    return 0
