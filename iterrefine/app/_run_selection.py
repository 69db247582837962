"""``iterrefine run``'s exact selection: the barrier at route and the one decision.

``run`` knows its whole input, so under ``routing_policy = "cluster_quota"`` (mode
``auto`` or ``exact``) it runs the paper's procedure: the score stages (in this process
and in every ``--workers`` child) send each survivor's signals; once ingest has ended and
every item still on its way has sent them, this process clusters all of them at once,
ranks every cluster and publishes the decisions; the route stages, held until then,
route by them (:mod:`iterrefine.selection.barrier`).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from iterrefine.config import Config
from iterrefine.io.ingest import IngestReport
from iterrefine.io.stream_export import StreamingExport

if TYPE_CHECKING:  # numpy comes with it: imported when the run selects, not before
    from iterrefine.selection import ExactSelection

#: How often the barrier is checked while the items are being scored.
_CHECK_EVERY_S = 0.1


def resolve_mode(config: Config) -> Config:
    """``config`` with the exact selection switched on when this run does it."""
    selection = config.selection
    if config.pipeline.routing_policy != "cluster_quota" or selection.mode == "online":
        return config
    return msgspec.structs.replace(config, selection=msgspec.structs.replace(
        selection, exact_run_id=uuid.uuid4().hex))


async def start_exact(
    stack: contextlib.AsyncExitStack, config: Config, bootstrap: str,
) -> ExactSelection | None:
    """The decider, reading signals from now on, when the run selects exactly."""
    if not config.selection.exact_run_id:
        return None
    from iterrefine.selection import ExactSelection

    return await stack.enter_async_context(ExactSelection(
        config.kafka, bootstrap, config.selection, data_dir=Path(config.data_dir)))


async def decide_at_barrier(
    exact: ExactSelection, ingesting: asyncio.Task[IngestReport], export: StreamingExport,
) -> None:
    """Wait for ingest and for every pending item's signals; then decide, once."""
    await asyncio.wait([ingesting])
    if ingesting.cancelled() or ingesting.exception() is not None:
        return  # the run fails on the ingest error itself
    # Polled: signals and terminal arrivals both move it, and a check costs microseconds
    # until the counts meet.
    while not exact.reached(export.is_pending, export.expected - export.arrived):  # noqa: ASYNC110
        await asyncio.sleep(_CHECK_EVERY_S)
    await exact.decide(export.is_pending)
