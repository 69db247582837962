"""``iterrefine run``: the whole pipeline on one machine, from a file to curated files.

Starts what is missing (embedded broker, LLM simulator), runs the stage graph
(:func:`iterrefine.pipeline.serve_pipeline`), ingests the input, follows the
terminal topics until every ingested item has arrived, then exports and
summarises. The stages are the same ones a deployment runs as separate
``iterrefine worker`` processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import structlog

from iterrefine.broker_state import ensure_broker
from iterrefine.config import Config, LLMRoleConfig
from iterrefine.export import ExportPaths, write_export
from iterrefine.extra_workers import ExtraWorkers, add_stats
from iterrefine.ingest import Ingestor, IngestReport, read_records
from iterrefine.kafka import make_producer
from iterrefine.llm import LLMStats
from iterrefine.metrics import Metrics
from iterrefine.pipeline import load_graph, serve_pipeline
from iterrefine.preflight import (
    RunAbort,
    check_llm_endpoints,
    check_output_paths,
    watch_group_joins,
)
from iterrefine.presets import preset_rows
from iterrefine.runtime import StageRunner
from iterrefine.sim import SimConfig, SimServer
from iterrefine.summary import build_summary
from iterrefine.topics import TopicNames, ensure_topics
from iterrefine.watch import TerminalWatcher

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
    #: Stage processes: this one plus ``workers - 1`` children (:mod:`iterrefine.extra_workers`).
    workers: int = 1


@dataclass
class RunResult:
    summary: dict[str, Any]
    paths: ExportPaths
    ingest: IngestReport
    complete: bool


def sim_roles(config: Config, base_url: str, sim: SimConfig) -> Config:
    """Point ``strong`` and ``backbone`` at the simulator (keeping explicit role settings)."""
    concurrency = max(64, sim.capacity * 2) if sim.capacity else 512
    roles = {
        name: LLMRoleConfig(base_url=base_url, model=f"sim-{name}", max_concurrency=concurrency,
                            timeout_s=max(30.0, sim.latency_ms / 1000 * 20), max_retries=8,
                            temperature=config.llm_defaults.temperature)
        for name in ("strong", "backbone")
    }
    return msgspec.structs.replace(config, llm={**roles, **config.llm})


@contextlib.asynccontextmanager
async def _bootstrap(config: Config) -> AsyncIterator[str]:
    """The configured cluster, a running ``broker up`` broker, or a new embedded one."""
    if config.kafka.bootstrap_servers:
        yield config.kafka.bootstrap_servers
        return
    bootstrap, broker = await asyncio.to_thread(ensure_broker, config.data_dir)
    try:
        yield bootstrap
    finally:
        if broker is not None:
            await asyncio.to_thread(broker.stop)


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
    """
    started = time.perf_counter()
    stop = stop or asyncio.Event()
    records = list(read_records(options.input))  # read first: a bad path fails before startup
    graph = load_graph(config)  # and so does a bad user stage
    paths = ExportPaths.beside(options.output)
    check_output_paths([paths.curated, paths.rejected, paths.dlq])
    run_abort = RunAbort(stop)
    async with contextlib.AsyncExitStack() as stack:
        bootstrap = await stack.enter_async_context(_bootstrap(config))
        if options.sim is not None:
            sim = await stack.enter_async_context(SimServer(options.sim, port=0))
            config = sim_roles(config, sim.base_url, options.sim)
        metrics = metrics if metrics is not None else Metrics()
        await check_llm_endpoints(config)  # before ingesting anything
        await ensure_topics(config.kafka, bootstrap, graph.topics())
        watcher = TerminalWatcher(config.kafka, bootstrap)
        await watcher.start()
        stack.push_async_callback(watcher.stop)
        extras = ExtraWorkers(config, bootstrap, options.workers - 1)
        if extras.count:
            # Started first: the groups settle once, when this process joins last.
            await extras.start()
            stack.push_async_callback(extras.stop)

        pipeline_stop = asyncio.Event()
        own_ready = asyncio.Event()
        runners: list[StageRunner] = []
        stages: asyncio.Task[dict[str, LLMStats]] = asyncio.create_task(serve_pipeline(
            config, bootstrap, graph=graph, metrics=metrics, metrics_port=options.metrics_port,
            stop=pipeline_stop, on_ready=own_ready.set, simulated=options.sim is not None,
            runners_out=runners, on_circuit_open=run_abort,
        ))
        joins = asyncio.create_task(watch_group_joins(
            runners, timeout_s=config.runtime.group_join_timeout_s, bootstrap=bootstrap,
            abort=run_abort))
        stack.callback(joins.cancel)
        try:
            if extras.count:
                # Ingest once this process has its share too: a rebalance mid-run would
                # hold every stage up while the groups re-form.
                await _until_set_or_done(own_ready, stages, stop)
            report = await _ingest(config, bootstrap, records, metrics)
            if on_ingested is not None:
                on_ingested(len(report.ids))
            deadline = None if options.timeout_s is None else time.monotonic() + options.timeout_s
            seen = await watcher.wait_for(
                report.ids,
                on_progress=on_progress,
                should_stop=lambda: stop.is_set() or stages.done() or (
                    deadline is not None and time.monotonic() > deadline),
            )
        finally:
            # The children leave their groups first, while this process keeps polling and
            # so rejoins at once. The other way round the children were mid-rejoin when
            # told to stop, and the embedded Tansu then kept them as members for good:
            # every later JoinGroup of these groups hung (2 of 2 tries before, 0 of 3 after).
            child_stats = await extras.stop()
            pipeline_stop.set()
            # Drains in-flight work and commits; re-raises a stage crash.
            own_stats = await stages
        llm_stats = add_stats(own_stats, child_stats)
        complete = seen >= len(report.ids)
        if not complete:
            log.warning("run_incomplete", expected=len(report.ids), arrived=seen)
        chosen = [watcher.selection.by_id[i] for i in report.ids if i in watcher.selection.by_id]
        write_export(chosen, paths)
        summary = build_summary(
            chosen,
            items_in=report.records,
            invalid_at_ingest=report.invalid,
            wall_time_s=time.perf_counter() - started,
            simulated=options.sim is not None,
            llm_stats=llm_stats,
            metrics=metrics,
            duplicates_removed=watcher.selection.duplicates,
        )
        # First wins: later records with a taken id are in the DLQ; say how many (README "Input").
        summary["duplicates_at_ingest"] = {"duplicate_id": report.duplicate_ids,
                                           "duplicate_record": report.duplicate_records}
        summary["complete"] = complete
        summary["pending"] = len(report.ids) - seen
        summary["aborted"] = run_abort.problem
        if config.preset is not None:
            summary["preset"] = {"name": config.preset,
                                 "settings": msgspec.to_builtins(preset_rows(config))}
        return RunResult(summary=summary, paths=paths, ingest=report, complete=complete)


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
    config: Config, bootstrap: str, records: list[Any], metrics: Metrics
) -> IngestReport:
    names = TopicNames(config.kafka.topic_prefix)
    producer = make_producer(config.kafka, bootstrap, linger_ms=config.runtime.linger_ms)
    await producer.start()
    try:
        ingestor = Ingestor(producer, names["items.raw"], names["items.dlq"],
                            max_item_bytes=config.runtime.max_item_bytes, metrics=metrics)
        for record in records:
            await ingestor.send(record)
        await ingestor.flush()
        return ingestor.report
    finally:
        await producer.stop()
