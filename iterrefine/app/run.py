"""``iterrefine run``: the whole pipeline on one machine, from a file to curated files.

Starts what is missing (embedded broker, LLM simulator), runs the stage graph
(:func:`iterrefine.app.pipeline.serve_pipeline`), ingests the input, follows the
terminal topics until every ingested item has arrived, then exports and
summarises. The stages are the same ones a deployment runs as separate
``iterrefine worker`` processes.

:func:`run_pipeline` reads top-down, a phase a step:

1. open the input and check the outputs: a bad path, format or user stage fails
   before anything starts;
2. start the LLM roles (on the simulator if asked) and probe them in the background;
3. start or find the broker (:mod:`iterrefine.app._run_broker`), create the topics,
   spawn the extra worker processes and start the watcher of the terminal topics;
4. once every role has answered its probe, ingest while the stages run, follow the
   terminal topics, and stop the stages in the right order
   (:mod:`iterrefine.app._run_stages`);
5. finish the export and summarise.

What steps 2 and 3 start is on one exit stack, stopped in reverse order after step 4.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import structlog

from iterrefine.app._extra_workers import ExtraWorkers
from iterrefine.app._meter import RunMeter, check_cost_cap
from iterrefine.app._preflight import RunAbort, check_llm_roles_or_cache, check_output_paths
from iterrefine.app._run_broker import (
    check_pipeline_idle,
    for_own_broker,
    for_shared_cluster,
    input_bytes,
    run_broker,
)
from iterrefine.app._run_selection import resolve_mode, start_exact
from iterrefine.app._run_stages import StageRun, Started
from iterrefine.app._summary import build_summary
from iterrefine.app.dataset import read_rows, require_datasets, save_dataset
from iterrefine.app.pipeline import load_graph, pipeline_topics
from iterrefine.app.prespawn import Prespawned
from iterrefine.app.pricing import cost_summary, trial_drivers
from iterrefine.config import Config, LLMRoleConfig, check_endpoints
from iterrefine.config.extras import require_extras_of
from iterrefine.config.presets import preset_rows
from iterrefine.errors import EmptyInput
from iterrefine.graph.spec import StageGraph
from iterrefine.io.export import ExportPaths
from iterrefine.io.ingest import IngestReport, RawRecord
from iterrefine.io.inputs import InputSpec, open_input
from iterrefine.io.outputs import Shape, output_paths, reshape_export
from iterrefine.io.stream_export import StreamingExport
from iterrefine.io.watch import TerminalWatcher
from iterrefine.kafka.topics import ensure_topics
from iterrefine.llm import LLMRoles, LLMStats
from iterrefine.observe.metrics import Metrics
from iterrefine.observe.proctime import Timeline
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
    #: Log a ``run_progress`` event this often (items, rate, ETA, calls, tokens, money):
    #: the progress bar of a run whose stderr is not a terminal. None: no such events.
    progress_every_s: float | None = None
    #: Also write the curated rows as a Hugging Face ``save_to_disk`` folder with a
    #: dataset card (:mod:`iterrefine.app.dataset`; the hf extra).
    dataset_dir: Path | None = None


@dataclass
class RunResult:
    summary: dict[str, Any]
    paths: ExportPaths
    ingest: IngestReport
    complete: bool


#: What a role's own table keeps under ``--llm sim`` when it names no endpoint: the
#: user's prices and limits, on the simulator's endpoint settings.
_KEPT_ON_SIM = ("price_in_per_mtok", "price_out_per_mtok", "requests_per_minute",
                "tokens_per_minute", "max_tokens", "temperature")
_SIM_ROLES = ("strong", "backbone", "embedding", "difficulty")


def sim_roles(config: Config, base_url: str, sim: SimConfig) -> Config:
    """Point ``strong`` and ``backbone`` at the simulator, over the roles' own settings.

    With the paper's selection on, ``embedding`` and ``difficulty`` too. The simulator
    wins over an endpoint the config names (``--llm sim`` means no model answers); a
    role's prices and limits stay, so a simulated run shows what it would cost.
    """
    concurrency = max(64, sim.capacity * 2) if sim.capacity else 512
    identity = sim.answers_identity()
    names = ["strong", "backbone"]
    if config.pipeline.routing_policy == "cluster_quota":
        names += ["embedding", "difficulty"]
    names += [name for name, role in config.llm.items()
              if name in _SIM_ROLES and name not in names and not role.base_url]

    def on_sim(name: str) -> LLMRoleConfig:
        default = LLMRoleConfig(
            base_url=base_url, model=f"sim-{name}", max_concurrency=concurrency,
            timeout_s=max(30.0, sim.latency_ms / 1000 * 20), max_retries=8,
            structured_output="json_schema", temperature=config.llm_defaults.temperature,
            endpoint_identity=identity)
        own = config.llm.get(name)
        if own is None:
            return default
        if not own.base_url:  # settings only (prices, limits)
            return msgspec.structs.replace(
                default, **{field: getattr(own, field) for field in _KEPT_ON_SIM})
        return msgspec.structs.replace(own, base_url=base_url, model=default.model,
                                       api_key_env=None,
                                       endpoint_identity=identity)

    return msgspec.structs.replace(config, llm={**config.llm, **{n: on_sim(n) for n in names}})


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
    started_at = options.started_at if options.started_at is not None else time.perf_counter()
    timeline = Timeline(started_at)
    timeline.mark("imports")  # and argument parsing: everything before this function
    stop = stop or asyncio.Event()
    # Opened first (a bad path or format fails before startup), then streamed into ingest.
    source = _Input.open(options)
    graph = load_graph(config)  # and so does a bad user stage
    require_extras_of(config)  # or a part the config needs that is not installed
    outputs = _Outputs.check(options)
    if options.dataset_dir is not None:
        require_datasets()
    run_abort = RunAbort(stop)
    async with contextlib.AsyncExitStack() as stack:
        llm = await _start_llm(stack, config, options, metrics, run_abort, timeline)
        meter = _start_meter(stack, llm, options, stop)
        if source.trial:  # each trial item's cost, for the estimate's interval
            llm.roles.keep_usage_by_item()
        started = await _start_kafka(stack, llm, options, source, graph, timeline)
        await llm.preflight  # every endpoint answers and takes its key: nothing was paid yet
        export = StreamingExport(outputs.streamed)
        report, llm_stats = await StageRun(
            started, source.records, export, timeline=timeline, stop=stop, abort=run_abort,
            timeout_s=options.timeout_s, on_ingested=_both(meter.on_ingested, on_ingested),
            on_progress=_both(meter.on_progress, on_progress),
        ).run(stack)
    timeline.mark("broker_stopped")
    summary = _summarise(export, report, llm_stats, started, started_at=started_at,
                         abort=run_abort)
    summary["stopped_by_cost_cap"] = (None if meter.cap_reached is None
                                      else dataclasses.asdict(meter.cap_reached))
    summary["cost"] = _cost(summary, started.config, source, llm.roles, options.workers)
    if options.dataset_dir is not None:  # from the full rows, whatever --shape writes
        save_dataset(summary, read_rows(outputs.streamed.curated), options.dataset_dir)
    if outputs.reshape:
        reshape_export(outputs.streamed, options.output, options.shape)
    timeline.mark("exported")
    # Seconds since the command started at which each phase ended.
    summary["timeline"] = timeline.marks
    if started.config.preset is not None:  # the settings as the run used them
        summary["preset"] = {"name": started.config.preset,
                             "settings": msgspec.to_builtins(preset_rows(started.config))}
    return RunResult(summary=summary, paths=outputs.paths, ingest=report,
                     complete=export.complete)


# -- 1. the input and the outputs, before anything starts ---------------------------------


@dataclass(frozen=True)
class _Input:
    spec: InputSpec
    #: Only part of the input runs (``--limit``/``--sample``): the summary estimates the rest.
    trial: bool
    #: Read already, so that a bad format or an empty input fails before startup; the
    #: broker's storage follows its size.
    first: RawRecord
    #: Every record, ``first`` included, read as ingest sends them.
    records: Iterator[RawRecord]

    @classmethod
    def open(cls, options: RunOptions) -> _Input:
        spec = options.input_spec or InputSpec(str(options.input))
        records = open_input(spec).records()
        first = next(records, None)
        trial = spec.limit is not None or spec.sample is not None
        if first is None:
            raise EmptyInput(f"{spec.source} holds no records{' (in this trial)' if trial else ''}"
                             ": nothing to curate, nothing was started or written")
        return cls(spec, trial, first, itertools.chain([first], records))

    def count_all(self) -> int | None:
        """The whole input's record count, for a trial's estimate (no validation)."""
        spec = self.spec
        return open_input(InputSpec(spec.source, format=spec.format, split=spec.split)).count()


@dataclass(frozen=True)
class _Outputs:
    paths: ExportPaths
    #: Where rows stream as they arrive: ``paths`` itself, or full JSON lines beside it
    #: that another shape or Parquet is written from at the end (``reshape``).
    streamed: ExportPaths
    reshape: bool

    @classmethod
    def check(cls, options: RunOptions) -> _Outputs:
        """Where the rows go, each path checked writable."""
        paths = output_paths(options.output)  # .parquet names its rejected file alike
        # Rows stream out as full JSON lines; another shape or Parquet is written from them.
        reshape = options.shape != "full" or paths != ExportPaths.beside(options.output)
        streamed = (ExportPaths.beside(
            options.output.with_name(f".{options.output.name}.full.jsonl"))
            if reshape else paths)
        check_output_paths([paths.curated, paths.rejected, paths.dlq])
        return cls(paths, streamed, reshape)


# -- 2. the LLM roles, probed while the broker starts ------------------------------------


@dataclass(frozen=True)
class _LLM:
    #: The run's config, with the simulator's roles when it runs.
    config: Config
    metrics: Metrics
    roles: LLMRoles
    #: Every role probed (:func:`check_llm_roles`); awaited before anything is ingested.
    preflight: asyncio.Task[None]


async def _start_llm(
    stack: contextlib.AsyncExitStack, config: Config, options: RunOptions,
    metrics: Metrics | None, run_abort: RunAbort, timeline: Timeline,
) -> _LLM:
    """Start the simulator if asked, then a client per role; probe them in the background."""
    sim_config = options.sim
    if sim_config is not None:
        from iterrefine.sim import SimServer  # aiohttp.web and numpy: only for --llm sim

        sim = await stack.enter_async_context(SimServer(sim_config, port=0))
        config = sim_roles(config, sim.base_url, sim_config)
    else:
        check_endpoints(config)
    check_cost_cap(config.max_cost, config.llm, workers=options.workers)
    metrics = metrics if metrics is not None else Metrics(
        longest_timeout_s=max((r.timeout_s for r in config.llm.values()), default=0.0))
    # The stages' own clients, probed while the broker starts and answered before
    # anything is ingested: their first burst of calls then finds a connection open
    # per role and openai's per-client set-up done (see wire.settle_platform).
    roles = await stack.enter_async_context(
        LLMRoles(config, metrics=metrics, on_circuit_open=run_abort))
    preflight = asyncio.create_task(_checked(check_llm_roles_or_cache(
        (roles[role] for role in roles), cached=roles.cache is not None), timeline))
    stack.callback(preflight.cancel)
    return _LLM(config, metrics, roles, preflight)


def _start_meter(
    stack: contextlib.AsyncExitStack, llm: _LLM, options: RunOptions, stop: asyncio.Event,
) -> RunMeter:
    """Progress events and the cost cap (:mod:`iterrefine.app._meter`), until the run ends."""
    meter = RunMeter(llm.roles.stats, llm.config.llm, budget=llm.roles.budget,
                     progress_every_s=options.progress_every_s, stop=stop)
    watching = asyncio.create_task(meter.watch())
    stack.callback(watching.cancel)
    return meter


def _both(first: Callable[[int], None],
          second: Callable[[int], None] | None) -> Callable[[int], None]:
    if second is None:
        return first

    def call(n: int) -> None:
        first(n)
        second(n)
    return call


async def _checked(check: Awaitable[None], timeline: Timeline) -> None:
    await check
    timeline.mark("preflight")


# -- 3. the broker, the topics, the extra worker processes and the watcher -----------------


#: How long the terminal watcher may rest when another process may produce the run's last
#: item: that record is seen after the rest, and the run ends only then.
SHARED_WATCHER_REST_MS = 2000


def watcher_rest_ms(config: Config, *, alone: bool) -> int:
    """The terminal watcher's longest rest. ``alone``: this process runs every stage on a
    broker nobody else uses, so each terminal record is produced here and rings the
    watcher's doorbell at once; it may rest as long as the stages (10 s), instead of
    fetching every 2 s while all items wait on a slow endpoint."""
    stages_ms = config.runtime.idle_poll_max_ms
    return stages_ms if alone else min(stages_ms, SHARED_WATCHER_REST_MS)


async def _start_kafka(
    stack: contextlib.AsyncExitStack, llm: _LLM, options: RunOptions, source: _Input,
    graph: StageGraph, timeline: Timeline,
) -> Started:
    """Everything the stages run on, its stopping pushed on ``stack``."""
    bootstrap, own_broker = await stack.enter_async_context(
        run_broker(llm.config, input_bytes(source.spec, source.first)))
    timeline.mark("broker")
    config = await for_shared_cluster(llm.config, bootstrap, options.workers) \
        if own_broker is None else for_own_broker(llm.config, options.workers,
                                                  on_disk=own_broker.durable)
    config = resolve_mode(config)  # before the children get it: they take part too
    owned = own_broker is not None
    await ensure_topics(config.kafka, bootstrap, pipeline_topics(config, graph))
    if not owned:
        await check_pipeline_idle(config, bootstrap, graph.inputs())
    exact = await start_exact(stack, config, bootstrap)
    timeline.mark("topics")
    extras = ExtraWorkers(config, bootstrap, options.workers - 1,
                          prespawned=options.prespawned)
    if extras.count:
        # Started first, all at once: they import while this process gets going.
        await extras.spawn()
        stack.push_async_callback(extras.stop)
    watcher = TerminalWatcher(
        config.kafka, bootstrap, fetch_max_wait_ms=config.runtime.fetch_max_wait_ms,
        idle_poll_max_ms=watcher_rest_ms(config, alone=owned and not extras.count))
    await watcher.start()
    stack.push_async_callback(watcher.stop)
    if extras.count and config.runtime.static_partitions is None:
        await extras.wait_ready()  # the groups settle once, when this process joins last
    elif extras.count:
        # Static shares need no settling: a late child starts from the committed
        # offsets (none yet: the beginning). This only collects their READY lines.
        readiness = asyncio.create_task(extras.wait_ready())
        stack.callback(readiness.cancel)
    return Started(config=config, bootstrap=bootstrap, owned=owned, graph=graph,
                   metrics=llm.metrics, roles=llm.roles, extras=extras, watcher=watcher,
                   metrics_port=options.metrics_port, simulated=options.sim is not None,
                   exact=exact)


# -- 5. the summary ------------------------------------------------------------------------


def _cost(summary: dict[str, Any], config: Config, source: _Input, roles: LLMRoles,
          workers: int) -> dict[str, Any]:
    """What the run cost; for a trial, the estimate for the whole input.

    Each item's cost is known only when one process made all its calls (``--workers 1``);
    with more, the estimate is scaled from the totals and states no interval.
    """
    cost = cost_summary(
        summary["llm"], config.llm, items_run=summary["items_in"],
        items_total=source.count_all() if source.trial else None,
        usage_by_item=roles.usage_by_item() if source.trial and workers == 1 else None,
        sampled=source.spec.sample is not None)
    if "estimate_full_input" in cost:
        cost["estimate_full_input"]["trial"] = trial_drivers(summary)
    return cost


def _summarise(
    export: StreamingExport, report: IngestReport, llm_stats: dict[str, LLMStats],
    started: Started, *, started_at: float, abort: RunAbort,
) -> dict[str, Any]:
    """Finish the streamed export and count what it holds, the ingest and the LLM calls."""
    complete = export.complete
    if not complete:
        log.warning("run_incomplete", expected=export.expected, arrived=export.arrived)
    export.finish()
    summary = build_summary(
        export.terminals(),
        items_in=report.records,
        invalid_at_ingest=report.invalid,
        wall_time_s=time.perf_counter() - started_at,
        simulated=started.simulated,
        llm_stats=llm_stats,
        metrics=started.metrics,
        duplicates_removed=export.duplicates,
    )
    # First wins: later records with a taken id are in the DLQ; say how many (README "Input").
    summary["duplicates_at_ingest"] = {"duplicate_id": report.duplicate_ids,
                                       "duplicate_record": report.duplicate_records}
    summary["complete"] = complete
    summary["pending"] = export.expected - export.arrived
    summary["aborted"] = abort.problem
    if started.exact is not None and "selection" in summary:
        # How the clusters were made: the exact procedure's k (and why, on a small input).
        summary["selection"].update(started.exact.report)
    return summary
