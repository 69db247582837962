"""The run's progress bar: count, elapsed time and ETA, with log lines printed above it.

structlog writes to the stream it was configured with. While the bar is live,
rich swaps ``sys.stderr`` for a proxy that prints through the console, above the
bar; logging is pointed at that proxy for the bar's lifetime and back at the real
stderr afterwards, so a log line never tears the bar on a terminal.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from iterrefine.observe.logging import configure_logging


@contextmanager
def run_progress(
    console: Console, *, show: bool, log_json: bool | None, log_level: str
) -> Iterator[Progress]:
    progress = Progress(
        TextColumn("[bold]curating"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=console, disable=not show, transient=False, redirect_stderr=True,
    )
    with progress:
        if show:
            configure_logging(json=log_json, level=log_level, stream=sys.stderr)  # the proxy
        try:
            yield progress
        finally:
            if show:
                configure_logging(json=log_json, level=log_level, stream=sys.__stderr__)
