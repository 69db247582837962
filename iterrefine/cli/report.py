"""``iterrefine report SUMMARY.json -o report.png [--html]``: charts of a finished run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:  # argparse's _SubParsersAction is private
    parser = subparsers.add_parser(
        "report",
        help="draw a PNG (and optionally HTML) report from a run's summary JSON",
        description=(
            "Draw outcome counts, refinement rounds, judge scores before/after refinement "
            "and LLM latency per role from the summary JSON that `iterrefine run` writes. "
            "Runs made with the LLM simulator are labelled as such."
        ),
    )
    parser.add_argument("summary", type=Path, metavar="SUMMARY.json", help="run summary file")
    parser.add_argument(
        "-o", "--output", type=Path, default=Path("report.png"),
        help="PNG to write (default report.png)",
    )
    parser.add_argument(
        "--html", action="store_true",
        help="also write an HTML page (the PNG embedded, plus tables) beside it, as .html",
    )
    parser.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from iterrefine.config.extras import require_extra

    require_extra("reports", "iterrefine report (its plots)")
    # matplotlib takes a noticeable fraction of a second to import; only pay it here.
    from iterrefine.tools.report import load_summary, write_report

    summary = load_summary(args.summary)
    output: Path = args.output
    html_path = output.with_suffix(".html") if args.html else None
    for path in write_report(summary, output, html_path=html_path):
        print(f"wrote {path}")
    return 0
