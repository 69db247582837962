"""The middle of ``iterrefine run``: ingest while the stages run, follow the terminal
topics until every ingested item has arrived, then stop the stages in the right order.

:func:`iterrefine.app.run.run_pipeline` starts what this needs (LLM roles, broker,
topics, extra worker processes, the watcher of the terminal topics) and hands it over
as :class:`Started`; :class:`StageRun` gives back the ingest report and the LLM
counters of every stage process. The order of things here is the subtle part of a
run, and each step says why it comes where it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from iterrefine.app._extra_workers import ExtraWorkers, add_stats
from iterrefine.app._preflight import RunAbort, watch_group_joins
from iterrefine.app._run_selection import decide_at_barrier
from iterrefine.app.pipeline import serve_pipeline
from iterrefine.config import Config
from iterrefine.graph.spec import StageGraph
from iterrefine.io.ingest import Ingestor, IngestReport, RawRecord
from iterrefine.io.stream_export import StreamingExport
from iterrefine.io.watch import TerminalWatcher
from iterrefine.kafka.clients import make_producer
from iterrefine.kafka.topics import TopicNames
from iterrefine.llm import LLMRoles, LLMStats
from iterrefine.observe.metrics import Metrics
from iterrefine.observe.proctime import Timeline
from iterrefine.runtime import StageRunner

if TYPE_CHECKING:
    from iterrefine.selection import ExactSelection

#: ``RunResult.ingest.ids`` keeps the first this many ids (the run itself needs none).
KEEP_IDS_UP_TO = 10_000


@dataclass(frozen=True)
class Started:
    """What the run has started for its stages; the run's exit stack stops all of it."""

    #: The run's config: the simulator's roles and the own broker's settings applied.
    config: Config
    bootstrap: str
    #: The broker is this run's own (nobody else can be in its groups).
    owned: bool
    graph: StageGraph
    metrics: Metrics
    roles: LLMRoles
    extras: ExtraWorkers
    watcher: TerminalWatcher
    metrics_port: int | None
    simulated: bool
    #: The exact selection's decider (``routing_policy = "cluster_quota"``, not online).
    exact: ExactSelection | None = None

    @property
    def static_shares(self) -> bool:
        """Stage processes take fixed partition shares (on the run's own broker, or on a
        shared Tansu): no consumer groups to settle or to disturb."""
        return self.config.runtime.static_partitions is not None


class StageRun:
    """One pass of the stages over the input: the state the phase keeps while it runs."""

    def __init__(
        self,
        started: Started,
        records: Iterator[RawRecord],
        export: StreamingExport,
        *,
        timeline: Timeline,
        stop: asyncio.Event,
        abort: RunAbort,
        timeout_s: float | None,
        on_ingested: Callable[[int], None] | None,
        on_progress: Callable[[int], None] | None,
    ) -> None:
        self._started = started
        self._records = records
        self._export = export
        self._timeline = timeline
        self._stop = stop
        self._abort = abort
        self._timeout_s = timeout_s
        self._on_ingested = on_ingested
        self._on_progress = on_progress
        #: Tells this process's stages to drain, commit and return.
        self._pipeline_stop = asyncio.Event()
        self._own_ready = asyncio.Event()
        self._ingest_reported = False
        #: The exact selection's barrier and decision (None: online or threshold).
        self._barrier: asyncio.Task[None] | None = None

    async def run(
        self, stack: contextlib.AsyncExitStack,
    ) -> tuple[IngestReport, dict[str, LLMStats]]:
        """Ingest, follow the terminal topics, stop; the ingest report and LLM counters.

        An ingest failure is re-raised once the stages have stopped; any failure aborts
        the export. ``stack`` (the run's) cancels the group-join watchdog on the way out.
        """
        started = self._started
        # With consumer groups, ingest once this process has its share too: a rebalance
        # mid-run would hold every stage up while the groups re-form. With static shares,
        # ingest now: the records are in Kafka when the stages first fetch.
        settle_first = bool(started.extras.count) and not started.static_shares
        ingesting = None if settle_first else self._start_ingest()
        runners: list[StageRunner] = []
        stages: asyncio.Task[dict[str, LLMStats]] = asyncio.create_task(serve_pipeline(
            started.config, started.bootstrap, graph=started.graph, metrics=started.metrics,
            metrics_port=started.metrics_port, stop=self._pipeline_stop,
            on_ready=self._stages_ready, simulated=started.simulated, topics_ready=True,
            runners_out=runners, roles=started.roles,
        ))
        joins = asyncio.create_task(watch_group_joins(
            runners, timeout_s=started.config.runtime.group_join_timeout_s,
            bootstrap=started.bootstrap, abort=self._abort))
        stack.callback(joins.cancel)
        try:
            if ingesting is None:
                await _until_set_or_done(self._own_ready, stages, self._stop)
                ingesting = self._start_ingest()
            if started.exact is not None:
                self._barrier = asyncio.create_task(
                    decide_at_barrier(started.exact, ingesting, self._export))
                stack.callback(self._barrier.cancel)
            report = await self._follow(ingesting, stages)
            if self._barrier is not None and self._barrier.done() \
                    and not self._barrier.cancelled() and self._barrier.exception():
                raise self._barrier.exception()  # type: ignore[misc]  # checked just above
        except BaseException:
            self._export.abort()
            raise
        finally:
            if ingesting is not None and not ingesting.done():
                ingesting.cancel()
            own_stats, child_stats = await self._stop_stages(stages, runners)
            self._timeline.mark("stages_stopped")
        return report, add_stats(own_stats, child_stats)

    def _start_ingest(self) -> asyncio.Task[IngestReport]:
        started = self._started
        return asyncio.create_task(_ingest(
            started.config, started.bootstrap, self._records, self._export, started.metrics))

    def _stages_ready(self) -> None:
        self._own_ready.set()
        self._timeline.mark("stages_ready")

    async def _follow(
        self, ingesting: asyncio.Task[IngestReport], stages: asyncio.Task[dict[str, LLMStats]],
    ) -> IngestReport:
        """Hand terminal items to the export until every ingested item has arrived."""
        deadline = None if self._timeout_s is None else time.monotonic() + self._timeout_s
        await self._started.watcher.follow(
            self._export.offer,
            done=lambda: self._ingest_over(ingesting) and self._export.complete,
            on_progress=self._on_progress,
            should_stop=lambda: self._should_stop(ingesting, stages, deadline),
        )
        self._timeline.mark("last_item")
        return await ingesting  # re-raises an ingest failure

    def _ingest_over(self, ingesting: asyncio.Task[IngestReport]) -> bool:
        """Whether ingest has ended; the first time, tell ``on_ingested`` how many to expect."""
        if not ingesting.done():
            return False
        if not self._ingest_reported:
            if self._on_ingested is not None and not ingesting.cancelled() \
                    and ingesting.exception() is None:
                self._on_ingested(self._export.expected)
            self._timeline.mark("ingested")
            self._ingest_reported = True
        return True

    def _should_stop(
        self, ingesting: asyncio.Task[IngestReport], stages: asyncio.Task[dict[str, LLMStats]],
        deadline: float | None,
    ) -> bool:
        """Asked to stop, a stage process ended, ingest or the selection failed, or the
        timeout passed."""
        barrier = self._barrier
        return self._stop.is_set() or stages.done() or self._started.extras.exited() or (
            ingesting.done() and ingesting.exception() is not None) or (
            barrier is not None and barrier.done() and not barrier.cancelled()
            and barrier.exception() is not None) or (
            deadline is not None and time.monotonic() > deadline)

    async def _stop_stages(
        self, stages: asyncio.Task[dict[str, LLMStats]], runners: list[StageRunner],
    ) -> tuple[dict[str, LLMStats], dict[str, LLMStats]]:
        """Stop the extra worker processes and this process's stages: their LLM counters.

        Static shares have no group to disturb: everything stops at once. In consumer
        groups the children first drain and commit while every process is still a member,
        so no commit meets a group that has moved on (noida-db starts a new generation
        the moment a member leaves and refuses the old one's commits: 3 of 4 runs left
        5-19 records uncommitted), and so does this process with what it has finished
        (at the end of a run: everything). Then the children leave, while this process
        keeps polling; then this one drains, commits what finished since, and leaves.
        Its own finished offsets were first left to that last commit, which needs a
        rejoin after the children left: noida-db never completes it, and 2 of 3 runs
        there left this process's partitions uncommitted in every stage. With
        this process stopping first, the children were mid-rejoin when told to stop, and
        the embedded Tansu then kept them as members for good: every later JoinGroup of
        these groups hung.
        """
        extras = self._started.extras
        if self._started.static_shares:
            children = asyncio.create_task(extras.stop())
            self._pipeline_stop.set()
            child_stats = await children
            return await stages, child_stats
        await extras.drain(self._started.config.runtime.drain_timeout_s + 10)
        await asyncio.gather(*(runner.commit_finished() for runner in runners))
        child_stats = await extras.stop()
        self._pipeline_stop.set()
        # Drains in-flight work and commits; re-raises a stage crash.
        own_stats = await stages
        return own_stats, child_stats


async def _until_set_or_done(
    event: asyncio.Event, task: asyncio.Task[Any], stop: asyncio.Event
) -> None:
    """Wait for ``event``, or for ``task`` to end first (a stage crash surfaces there),
    or for ``stop``."""
    waiting = asyncio.create_task(event.wait())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([waiting, task, stopping], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
        stopping.cancel()


async def _ingest(
    config: Config, bootstrap: str, records: Iterable[RawRecord], export: StreamingExport,
    metrics: Metrics,
) -> IngestReport:
    """Send ``records`` as they are read; ``export`` learns each id before it is sent."""
    names = TopicNames(config.kafka.topic_prefix)
    producer = make_producer(config.kafka, bootstrap, linger_ms=config.runtime.linger_ms)
    await producer.start()
    kept: dict[str, None] = {}

    def expect(item_id: str) -> None:
        export.expect(item_id)
        if len(kept) < KEEP_IDS_UP_TO:
            kept.setdefault(item_id, None)

    try:
        ingestor = Ingestor(producer, names["items.raw"], names["items.dlq"],
                            max_item_bytes=config.runtime.max_item_bytes, keep_ids=False,
                            metrics=metrics, on_id=expect)
        for record in records:
            await ingestor.send(record)
        await ingestor.flush()
        ingestor.report.ids = kept
        return ingestor.report
    finally:
        await producer.stop()
