"""``iterrefine show ID``: one item's whole story in the terminal, with word diffs.

Original → the backbone's answer and its evaluation → each round's revision
(diffed against the original), the backbone's answer to it, the judge's verdict
and explanation → the aligned output (diffed against the original output).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from iterrefine.cli.common import add_kafka_args, config_from_args, resolve_bootstrap
from iterrefine.observe.logging import configure_logging
from iterrefine.tools.story import (
    Story,
    find_story,
    stories_from_export,
    stories_from_selection,
    terminal_selection,
)
from iterrefine.tools.worddiff import word_diff

_STYLES = {"equal": "", "delete": "red strike", "insert": "green underline"}
#: Without colour (piped to a file or `less`, NO_COLOR, a dumb terminal) a word diff is
#: marked as `git diff --word-diff=plain` marks it.
_MARKERS = {"equal": ("", ""), "delete": ("[-", "-]"), "insert": ("{+", "+}")}


def register(subparsers: Any) -> None:  # argparse's _SubParsersAction is private
    parser = subparsers.add_parser(
        "show",
        help="one item's story: original, each round, verdicts, aligned output (word diffs)",
        description=(
            "Print the history of item ID (or the only id starting with ID): the original, "
            "the backbone's answers, each round's revision with word diffs, the judge's verdict "
            "and explanation, and the aligned output. Reads an export in the full shape "
            "(--from, .jsonl or .parquet, with its rejected and DLQ files beside it) or, "
            "without --from, the terminal topics. Word diffs are coloured on a terminal and "
            "marked [-removed-]{+added+} without colour (piped to a file or a pager)."
        ),
    )
    parser.add_argument("id", metavar="ID")
    parser.add_argument("--from", dest="source", type=Path, metavar="EXPORT_FILE")
    add_kafka_args(parser)
    parser.set_defaults(func=cmd_show)


def load_stories(args: argparse.Namespace) -> Iterator[Story]:
    """From ``--from``, else from the terminal topics of the configured or running broker."""
    if args.source is not None:
        return stories_from_export(args.source)
    config = config_from_args(args)
    selection = asyncio.run(terminal_selection(config, resolve_bootstrap(config)))
    return stories_from_selection(selection)


def cmd_show(args: argparse.Namespace) -> int:
    configure_logging(json=args.log_json, level=args.log_level)
    story = find_story(load_stories(args), args.id)
    console = Console()
    console.print(render_story(story, markers=console.color_system is None))
    return 0


def diff_text(before: str, after: str, *, markers: bool = False) -> Text:
    """The word diff in colour, or (``markers``) as ``[-removed-]{+added+}`` text."""
    text = Text()
    for op, piece in word_diff(before, after):
        if markers:
            opening, closing = _MARKERS[op]
            text.append(f"{opening}{piece}{closing}")
        else:
            text.append(piece, style=_STYLES[op])
    return text


def _fields(*pairs: tuple[str, RenderableType | str]) -> Table:
    table = Table.grid(padding=(0, 1))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in pairs:
        table.add_row(name, Text(value) if isinstance(value, str) else value)
    return table


def render_story(story: Story, *, markers: bool = False) -> RenderableType:
    """Panels from first to last; dead letters show their reason and original bytes.

    ``markers``: word diffs as ``[-removed-]{+added+}``, for output without colour.
    """
    if story.item is None:
        row = story.row
        original = row.get("original", row.get("original_base64", ""))
        return Panel(_fields(("reason", str(row.get("reason", ""))),
                             ("stage", str(row.get("stage", ""))),
                             ("message", str(row.get("message", ""))),
                             ("original", str(original))),
                     title=f"{story.id} — dead letter", border_style="red")
    item = story.item
    parts: list[RenderableType] = []
    head = [("outcome", f"{story.outcome} ({item.status})"), ("rounds", str(len(item.rounds)))]
    if story.reason:
        head.append(("reason", story.reason))
    if story.cluster is not None:
        head.append(("cluster", str(story.cluster)))
    if item.judgement is not None:
        head.append(("verdict", f"{item.judgement.verdict}: {item.judgement.justification}"))
    if story.score_before is not None:
        after = "" if story.score_after is None else f" → after {story.score_after:.2f}"
        head.append(("judge score", f"before {story.score_before:.2f}{after}"))
    if item.provenance.simulated:
        head.append(("provenance", "SIMULATED LLM (not a model)"))
    parts.append(Panel(_fields(*head), title=f"item {item.id}", border_style="blue"))
    original = item.original
    parts.append(Panel(_fields(("instruction", original.instruction), ("input", original.input),
                               ("output", original.output)), title="original"))
    if item.evaluation is not None:
        evaluation = item.evaluation
        parts.append(Panel(_fields(
            ("backbone answer", evaluation.backbone_answer),
            ("score", f"{evaluation.score}/10"), ("evaluation", evaluation.text),
            ("suggestions", "\n".join(f"- {s}" for s in evaluation.suggestions))),
            title="evaluate: the backbone answers the original"))
    for rnd in item.rounds:
        style = "green" if rnd.winner in ("B", "Tie") else "yellow"
        rows: list[tuple[str, RenderableType | str]] = []
        if rnd.feedback:
            rows.append(("feedback", rnd.feedback))
        rows += [("instruction", diff_text(original.instruction, rnd.instruction,
                                           markers=markers)),
                 ("input", diff_text(original.input, rnd.input, markers=markers)),
                 ("backbone answer", rnd.backbone_answer),
                 ("verdict", f"winner {rnd.winner}"),
                 ("explanation", rnd.explanation)]
        parts.append(Panel(_fields(*rows), title=f"round {rnd.number}: refine → review",
                           border_style=style))
    if item.output != original.output or item.output_aligned:
        parts.append(Panel(_fields(("instruction", diff_text(original.instruction,
                                                             item.instruction, markers=markers)),
                                   ("input", diff_text(original.input, item.input,
                                                       markers=markers)),
                                   ("output", diff_text(original.output, item.output,
                                                        markers=markers))),
                           title="final (aligned output)", border_style="green"))
    return Group(*parts)
