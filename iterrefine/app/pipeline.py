"""The composition root: config → graph → LLM roles → context → stages → runners.

Every process that runs stages builds them here and nowhere else: ``iterrefine
run`` (:mod:`iterrefine.app.run`), ``iterrefine worker`` (:mod:`iterrefine.cli.worker`),
the ``--workers`` children (:mod:`iterrefine.app._extra_workers`), the tests
(:mod:`iterrefine.testing`) and the benchmarks. Dependencies point one way: the CLI
calls this module, this module imports the stages (:mod:`iterrefine.consumers` and
the user's, from config), and the stages use the mechanisms.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterable, Sequence

import structlog

from iterrefine.config import Config
from iterrefine.config.extras import require_extras_of
from iterrefine.consumers import PIPELINE
from iterrefine.errors import ConfigError
from iterrefine.graph.context import PipelineContext, Roles
from iterrefine.graph.spec import StageGraph, StageSpec, load_object
from iterrefine.item.model import Provenance
from iterrefine.kafka.topics import MODEL_TOPIC, ensure_topics
from iterrefine.llm import LLMRoles, LLMStats
from iterrefine.llm.circuit import Circuit
from iterrefine.llm.probe import is_simulator
from iterrefine.observe.metrics import Metrics
from iterrefine.runtime import Stage, StageRunner
from iterrefine.runtime.serve import install_stop_signals, serve_stages
from iterrefine.tasks.prompts import PROMPT_VERSION

__all__ = ["load_graph", "missing_roles", "pipeline_context", "pipeline_topics", "serve_pipeline"]

log = structlog.get_logger("iterrefine.worker")


def load_graph(config: Config, base: StageGraph = PIPELINE) -> StageGraph:
    """The built-in graph with the config's user stages (``[[stages]]``) inserted."""
    for path in config.import_paths:
        if path not in sys.path:
            sys.path.insert(0, path)
    graph = base
    for entry in config.stages:
        spec = load_object(entry.spec, what="stage")
        if not isinstance(spec, StageSpec):
            raise ConfigError(f"stage {entry.spec!r} is a {type(spec).__name__}, not a "
                              "StageSpec (see docs/writing-a-stage.md)")
        if entry.options:
            spec = spec.with_options(entry.options)
        graph = graph.inserted(spec, before=entry.before)
    return graph


def pipeline_topics(config: Config, graph: StageGraph) -> list[str]:
    """The logical topics a pipeline of ``graph`` uses: the graph's, and the shared
    selection model's under the paper's selection."""
    topics = list(graph.topics())
    if config.pipeline.routing_policy == "cluster_quota":
        topics.append(MODEL_TOPIC)
    return topics


def missing_roles(config: Config, specs: Iterable[StageSpec]) -> list[str]:
    """The LLM roles ``specs`` call that the config does not define."""
    needed = dict.fromkeys(role for spec in specs for role in spec.roles)
    return [role for role in needed if role not in config.llm]


def pipeline_context(
    config: Config, roles: Roles, metrics: Metrics, *, simulated: bool,
    prompt_version: str = PROMPT_VERSION,
) -> PipelineContext:
    """What the stages get: policy config, LLM roles, metrics, and the provenance stamp."""
    provenance = Provenance(
        prompt_version=prompt_version,
        models={role: entry.model for role, entry in config.llm.items()},
        simulated=simulated,
        temperatures={role: entry.temperature for role, entry in config.llm.items()},
        preset=config.preset,
    )
    return PipelineContext(config.pipeline, roles, metrics, provenance,
                           selection=config.selection)


def _held(stage: Stage, spec: StageSpec, roles: LLMRoles, ctx: PipelineContext) -> Stage:
    """``stage`` taking no new messages while the circuit of a role it calls is open, and
    (route, exact selection) until the run's decisions are all read."""
    circuits = [roles[name].circuit for name in spec.roles if name in roles]
    decisions = ctx.decisions if spec.name == "route" else None
    if not circuits and decisions is None:
        return stage
    return dataclasses.replace(stage, hold=lambda: any(c.is_open for c in circuits) or (
        decisions is not None and not decisions.complete))


async def _with_selection(
    stack: contextlib.AsyncExitStack, ctx: PipelineContext, config: Config, bootstrap: str,
    specs: Sequence[StageSpec], roles: LLMRoles, metrics: Metrics,
) -> PipelineContext:
    """The paper's selection's parts this process needs (numpy and scikit-learn are
    imported only when it is on): the score stage's selector, route's decision table."""
    if config.pipeline.routing_policy != "cluster_quota":
        return ctx
    names = {spec.name for spec in specs}
    from iterrefine.selection import DecisionTable, is_exact, selector_for

    if "score" in names:
        selector = await stack.enter_async_context(
            selector_for(config, bootstrap, roles, metrics))
        ctx = dataclasses.replace(ctx, selector=selector)
    if "route" in names and is_exact(config.selection):
        table = await stack.enter_async_context(
            DecisionTable(config.kafka, bootstrap, config.selection.exact_run_id))
        ctx = dataclasses.replace(ctx, decisions=table)
    return ctx


async def _simulated(config: Config) -> bool:
    """Whether any configured role is iterrefine's simulator (its output is marked so)."""
    answers = await asyncio.gather(*(is_simulator(e.base_url) for e in config.llm.values()))
    return any(answers)


async def serve_pipeline(
    config: Config,
    bootstrap: str,
    *,
    stages: Sequence[str] = ("all",),
    graph: StageGraph | None = None,
    metrics: Metrics | None = None,
    metrics_port: int | None = None,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[], None] | None = None,
    simulated: bool | None = None,
    prompt_version: str = PROMPT_VERSION,
    runners_out: list[StageRunner] | None = None,
    topics_ready: bool = False,
    on_circuit_open: Callable[[Circuit], None] | None = None,
    roles: LLMRoles | None = None,
    leave: asyncio.Event | None = None,
    on_drained: Callable[[], None] | None = None,
) -> dict[str, LLMStats]:
    """Serve ``stages`` of ``graph`` (default: the config's) until ``stop``; LLM counters.

    Without ``stop``, SIGTERM/SIGINT stop it (drain, commit). ``metrics_port`` serves
    ``/metrics``, ``/healthz`` and ``/readyz`` meanwhile. ``simulated=None`` asks
    the endpoints whether they are the simulator. ``on_ready`` is called once every
    stage has its first partitions. ``topics_ready``: the caller created the graph's
    topics already (each check costs an admin connection at startup).
    ``on_circuit_open`` hears when an LLM role's
    endpoint goes down (``run`` stops on a rejected key). ``roles``: clients the caller
    started and closes (``run`` probes them first); otherwise the stages' own.
    ``leave`` and ``on_drained``: commit, then stay in the groups until told to leave
    (:func:`iterrefine.runtime.serve.serve_stages`).
    """
    graph = graph if graph is not None else load_graph(config)
    require_extras_of(config)
    specs = graph.select(stages)
    if stop is None:
        stop = asyncio.Event()
        install_stop_signals(stop)
    metrics = metrics if metrics is not None else Metrics(
        longest_timeout_s=max((r.timeout_s for r in config.llm.values()), default=0.0))
    runners = runners_out if runners_out is not None else []
    if not topics_ready:  # a topic unlike the graph needs stops here, before any LLM call
        await ensure_topics(config.kafka, bootstrap, pipeline_topics(config, graph))
    async with contextlib.AsyncExitStack() as stack:
        if metrics_port is not None:
            from iterrefine.observe.http import MetricsServer  # aiohttp's server: only when asked

            await stack.enter_async_context(MetricsServer(
                metrics.registry, metrics_port, host=config.metrics_host,
                ready=lambda: bool(runners) and all(r.ready.is_set() for r in runners),
            ))
        if roles is None:
            roles = await stack.enter_async_context(
                LLMRoles(config, metrics=metrics, on_circuit_open=on_circuit_open))
        if simulated is None:
            simulated = await _simulated(config)
        ctx = pipeline_context(config, roles, metrics, simulated=simulated,
                               prompt_version=prompt_version)
        ctx = await _with_selection(stack, ctx, config, bootstrap, specs, roles, metrics)
        built = [_held(spec.build(ctx), spec, roles, ctx) for spec in specs]
        log.info("worker_starting", stages=[s.name for s in built], bootstrap=bootstrap,
                 simulated=simulated)
        await serve_stages(built, config=config, bootstrap_servers=bootstrap, metrics=metrics,
                           stop=stop, runners_out=runners, on_ready=on_ready,
                           topics_ready=True, leave=leave, on_drained=on_drained)
        return roles.stats()
