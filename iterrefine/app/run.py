"""``iterrefine run``: the whole pipeline on one machine, from a file to curated files.

Starts what is missing (embedded broker, LLM simulator), runs the stage graph
(:func:`iterrefine.app.pipeline.serve_pipeline`), ingests the input, follows the
terminal topics until every ingested item has arrived, then exports and
summarises. The stages are the same ones a deployment runs as separate
``iterrefine worker`` processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import structlog

from iterrefine.app._extra_workers import ExtraWorkers, add_stats
from iterrefine.app._preflight import (
    RunAbort,
    check_llm_roles,
    check_output_paths,
    watch_group_joins,
)
from iterrefine.app._run_broker import for_own_broker, input_bytes, run_broker
from iterrefine.app._summary import build_summary
from iterrefine.app.pipeline import load_graph, serve_pipeline
from iterrefine.app.prespawn import Prespawned
from iterrefine.config import Config, LLMRoleConfig
from iterrefine.config.presets import preset_rows
from iterrefine.io.export import ExportPaths
from iterrefine.io.ingest import Ingestor, IngestReport, RawRecord
from iterrefine.io.inputs import InputSpec, open_input
from iterrefine.io.outputs import Shape, output_paths, reshape_export
from iterrefine.io.stream_export import StreamingExport
from iterrefine.io.watch import TerminalWatcher
from iterrefine.kafka.clients import make_producer
from iterrefine.kafka.topics import TopicNames, ensure_topics
from iterrefine.llm import LLMRoles, LLMStats
from iterrefine.observe.metrics import Metrics
from iterrefine.observe.proctime import Timeline
from iterrefine.runtime import StageRunner
from iterrefine.sim import SimConfig

log = structlog.get_logger("iterrefine.run")


@dataclass(frozen=True)
class RunOptions:
    input: Path
    output: Path
    #: Start the built-in simulator with this config instead of calling real endpoints.
    sim: SimConfig | None = None
    metrics_port: int | None = None
    #: Give up waiting after this long (None = wait as long as it takes).
    timeout_s: float | None = None
    #: Stage processes: this one plus ``workers - 1`` children
    #: (:mod:`iterrefine.app._extra_workers`).
    workers: int = 1
    #: Format, trial (limit/sample) and split of ``input`` (default: by its name, all of it).
    input_spec: InputSpec | None = None
    shape: Shape = "full"
    #: ``time.perf_counter()`` when the command started (the summary's wall time counts
    #: from there); None: from the call of :func:`run_pipeline`.
    started_at: float | None = None
    #: ``workers - 1`` children started before the imports (:mod:`iterrefine.app.prespawn`).
    prespawned: Prespawned | None = None


@dataclass
class RunResult:
    summary: dict[str, Any]
    paths: ExportPaths
    ingest: IngestReport
    complete: bool


def sim_roles(config: Config, base_url: str, sim: SimConfig) -> Config:
    """Point ``strong`` and ``backbone`` at the simulator (keeping explicit role settings).

    With the paper's selection on, ``embedding`` and ``difficulty`` too.
    """
    concurrency = max(64, sim.capacity * 2) if sim.capacity else 512
    names = ["strong", "backbone"]
    if config.pipeline.routing_policy == "cluster_quota":
        names += ["embedding", "difficulty"]
    roles = {
        name: LLMRoleConfig(base_url=base_url, model=f"sim-{name}", max_concurrency=concurrency,
                            timeout_s=max(30.0, sim.latency_ms / 1000 * 20), max_retries=8,
                            structured_output="json_schema",
                            temperature=config.llm_defaults.temperature)
        for name in names
    }
    return msgspec.structs.replace(config, llm={**roles, **config.llm})


#: ``RunResult.ingest.ids`` keeps the first this many ids (the run itself needs none).
KEEP_IDS_UP_TO = 10_000


async def run_pipeline(
    config: Config,
    options: RunOptions,
    *,
    on_ingested: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
    metrics: Metrics | None = None,
) -> RunResult:
    """Run ``options.input`` through the pipeline and export the results.

    ``metrics`` lets a caller keep the registry (and serve it) beyond the run;
    with ``options.metrics_port`` the run itself serves ``/metrics``, ``/healthz``
    and ``/readyz`` while it lasts, like ``iterrefine worker`` does.

    The input is read as it is ingested and rows are exported as items arrive
    (:mod:`iterrefine.io.stream_export`), so memory does not grow with the input.
    """
    started = options.started_at if options.started_at is not None else time.perf_counter()
    timeline = Timeline(started)
    timeline.mark("imports")  # and argument parsing: everything before this function
    stop = stop or asyncio.Event()
    # Opened first (a bad path or format fails before startup), then streamed into ingest.
    spec = options.input_spec or InputSpec(str(options.input))
    records = open_input(spec).records()
    first = next(records, None)
    graph = load_graph(config)  # and so does a bad user stage
    paths = output_paths(options.output)  # .parquet names its rejected file alike
    # Rows stream out as full JSON lines; another shape or Parquet is written from them.
    reshape = options.shape != "full" or paths != ExportPaths.beside(options.output)
    streamed = (ExportPaths.beside(options.output.with_name(f".{options.output.name}.full.jsonl"))
                if reshape else paths)
    check_output_paths([paths.curated, paths.rejected, paths.dlq])
    run_abort = RunAbort(stop)
    export: StreamingExport | None = None
    async with contextlib.AsyncExitStack() as stack:
        if options.sim is not None:
            from iterrefine.sim import SimServer  # aiohttp.web and numpy: only for --llm sim

            sim = await stack.enter_async_context(SimServer(options.sim, port=0))
            config = sim_roles(config, sim.base_url, options.sim)
        metrics = metrics if metrics is not None else Metrics(
            longest_timeout_s=max((r.timeout_s for r in config.llm.values()), default=0.0))
        # The stages' own clients, probed while the broker starts and answered before
        # anything is ingested: their first burst of calls then finds a connection open
        # per role and openai's per-client set-up done (see wire.settle_platform).
        roles = await stack.enter_async_context(
            LLMRoles(config, metrics=metrics, on_circuit_open=run_abort))
        preflight = asyncio.create_task(
            _checked(check_llm_roles(roles[role] for role in roles), timeline))
        stack.callback(preflight.cancel)
        input_size = input_bytes(spec, first)
        bootstrap, own_broker = await stack.enter_async_context(run_broker(config, input_size))
        timeline.mark("broker")
        owned = own_broker is not None
        if own_broker is not None:
            config = for_own_broker(config, options.workers, on_disk=own_broker.durable)
        await ensure_topics(config.kafka, bootstrap, graph.topics())
        timeline.mark("topics")
        extras = ExtraWorkers(config, bootstrap, options.workers - 1,
                              prespawned=options.prespawned)
        if extras.count:
            # Started first, all at once: they import while this process gets going.
            await extras.spawn()
            stack.push_async_callback(extras.stop)
        watcher = TerminalWatcher(config.kafka, bootstrap,
                                  fetch_max_wait_ms=config.runtime.fetch_max_wait_ms)
        await watcher.start()
        stack.push_async_callback(watcher.stop)
        if extras.count and not owned:
            await extras.wait_ready()  # the groups settle once, when this process joins last
        elif extras.count:
            # Static shares need no settling: a late child starts from the committed
            # offsets (none yet: the beginning). This only collects their READY lines.
            readiness = asyncio.create_task(extras.wait_ready())
            stack.callback(readiness.cancel)

        await preflight  # every endpoint answers and takes its key: nothing was paid yet
        export = StreamingExport(streamed)
        source = records if first is None else itertools.chain([first], records)
        # With consumer groups, ingest once this process has its share too: a rebalance
        # mid-run would hold every stage up while the groups re-form. With static shares,
        # ingest now: the records are in Kafka when the stages first fetch.
        settle_first = bool(extras.count) and not owned
        ingesting: asyncio.Task[IngestReport] | None = None if settle_first else (
            asyncio.create_task(_ingest(config, bootstrap, source, export, metrics)))
        pipeline_stop = asyncio.Event()
        own_ready = asyncio.Event()

        def stages_ready() -> None:
            own_ready.set()
            timeline.mark("stages_ready")

        runners: list[StageRunner] = []
        stages: asyncio.Task[dict[str, LLMStats]] = asyncio.create_task(serve_pipeline(
            config, bootstrap, graph=graph, metrics=metrics, metrics_port=options.metrics_port,
            stop=pipeline_stop, on_ready=stages_ready, simulated=options.sim is not None,
            topics_ready=True, runners_out=runners, roles=roles,
        ))
        joins = asyncio.create_task(watch_group_joins(
            runners, timeout_s=config.runtime.group_join_timeout_s, bootstrap=bootstrap,
            abort=run_abort))
        stack.callback(joins.cancel)
        try:
            if ingesting is None:
                await _until_set_or_done(own_ready, stages, stop)
                ingesting = asyncio.create_task(_ingest(config, bootstrap, source, export, metrics))
            deadline = None if options.timeout_s is None else time.monotonic() + options.timeout_s
            ingest_task = ingesting
            reported = False

            def ingest_over() -> bool:
                nonlocal reported
                if not ingest_task.done():
                    return False
                if not reported and on_ingested is not None and not ingest_task.cancelled() \
                        and ingest_task.exception() is None:
                    on_ingested(export.expected)
                if not reported:
                    timeline.mark("ingested")
                reported = True
                return True

            await watcher.follow(
                export.offer,
                done=lambda: ingest_over() and export.complete,
                on_progress=on_progress,
                should_stop=lambda: stop.is_set() or stages.done() or extras.exited() or (
                    ingest_task.done() and ingest_task.exception() is not None) or (
                    deadline is not None and time.monotonic() > deadline),
            )
            timeline.mark("last_item")
            report = await ingesting  # re-raises an ingest failure
        except BaseException:
            export.abort()
            raise
        finally:
            if ingesting is not None and not ingesting.done():
                ingesting.cancel()
            # In consumer groups the children leave first, while this process keeps polling
            # and so rejoins at once. The other way round the children were mid-rejoin when
            # told to stop, and the embedded Tansu then kept them as members for good:
            # every later JoinGroup of these groups hung (2 of 2 tries before, 0 of 3 after).
            # Static shares have no group to disturb: everything stops at once.
            children = asyncio.create_task(extras.stop())
            if owned:
                pipeline_stop.set()
            child_stats = await children
            pipeline_stop.set()
            # Drains in-flight work and commits; re-raises a stage crash.
            own_stats = await stages
            timeline.mark("stages_stopped")
        llm_stats = add_stats(own_stats, child_stats)
    timeline.mark("broker_stopped")
    complete = export.complete
    if not complete:
        log.warning("run_incomplete", expected=export.expected, arrived=export.arrived)
    export.finish()
    summary = build_summary(
        export.terminals(),
        items_in=report.records,
        invalid_at_ingest=report.invalid,
        wall_time_s=time.perf_counter() - started,
        simulated=options.sim is not None,
        llm_stats=llm_stats,
        metrics=metrics,
        duplicates_removed=export.duplicates,
    )
    # First wins: later records with a taken id are in the DLQ; say how many (README "Input").
    summary["duplicates_at_ingest"] = {"duplicate_id": report.duplicate_ids,
                                       "duplicate_record": report.duplicate_records}
    summary["complete"] = complete
    summary["pending"] = export.expected - export.arrived
    summary["aborted"] = run_abort.problem
    if reshape:
        reshape_export(streamed, options.output, options.shape)
    timeline.mark("exported")
    # Seconds since the command started at which each phase ended.
    summary["timeline"] = timeline.marks
    if config.preset is not None:
        summary["preset"] = {"name": config.preset,
                             "settings": msgspec.to_builtins(preset_rows(config))}
    return RunResult(summary=summary, paths=paths, ingest=report, complete=complete)


async def _checked(check: Awaitable[None], timeline: Timeline) -> None:
    await check
    timeline.mark("preflight")


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
