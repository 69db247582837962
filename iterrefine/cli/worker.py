"""``iterrefine worker STAGE...``: long-running stage workers for deployments."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from iterrefine.cli.common import (
    add_kafka_args,
    add_llm_args,
    config_from_args,
    require_llm,
    resolve_bootstrap,
)
from iterrefine.config import Config
from iterrefine.logging import configure_logging

if TYPE_CHECKING:
    from iterrefine.llm import LLMStats

log = structlog.get_logger("iterrefine.worker")
STAGES = ("score", "route", "refine", "review", "align")


def register(subparsers: Any) -> None:  # argparse's _SubParsersAction is private
    parser = subparsers.add_parser(
        "worker",
        help="run pipeline stages until SIGTERM (one consumer group per stage)",
        description=(
            "Run one or more stages as a long-lived member of their consumer groups. Start "
            "more processes with the same stage to scale out; SIGTERM drains and commits."
        ),
    )
    parser.add_argument("stages", nargs="+", choices=[*STAGES, "all"], metavar="STAGE",
                        help=f"one or more of {', '.join(STAGES)}, or all")
    parser.add_argument("--metrics-port", type=int, metavar="N",
                        help="serve /metrics, /healthz and /readyz on this port")
    parser.add_argument("--group-instance-id", metavar="ID",
                        help="static group membership id, unique per worker process: on Kafka "
                        "a restart within the session timeout keeps its partitions without a "
                        "rebalance (ignored, with a warning, on the embedded Tansu broker, whose "
                        "groups never settle with static members)")
    add_kafka_args(parser)
    add_llm_args(parser)
    parser.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    configure_logging(json=args.log_json, level=args.log_level)
    config = config_from_args(args)
    stages = STAGES if "all" in args.stages else tuple(dict.fromkeys(args.stages))
    if set(stages) - {"route"}:
        require_llm(config)
    bootstrap = resolve_bootstrap(config)
    asyncio.run(serve_workers(config, bootstrap, stages))
    return 0


async def serve_workers(
    config: Config, bootstrap: str, stages: tuple[str, ...], *,
    on_ready: Callable[[], None] | None = None,
) -> dict[str, LLMStats]:
    """Serve ``stages`` until SIGTERM/SIGINT; the LLM roles' counters at the end.

    ``on_ready`` is called once every stage has its first partitions.
    """
    from consumers import build_stages
    from iterrefine.context import PipelineContext
    from iterrefine.http import MetricsServer
    from iterrefine.llm import LLMRoles
    from iterrefine.llm.probe import is_simulator
    from iterrefine.metrics import Metrics
    from iterrefine.model import Provenance
    from iterrefine.prompts import PROMPT_VERSION
    from iterrefine.runtime import StageRunner
    from iterrefine.selection import selector_for
    from iterrefine.worker import install_stop_signals, serve_stages

    stop = asyncio.Event()
    install_stop_signals(stop)
    metrics = Metrics()
    runners: list[StageRunner] = []
    async with contextlib.AsyncExitStack() as stack:
        if config.metrics_port is not None:
            await stack.enter_async_context(MetricsServer(
                metrics.registry, config.metrics_port,
                ready=lambda: bool(runners) and all(r.ready.is_set() for r in runners),
            ))
        roles = await stack.enter_async_context(LLMRoles(config, metrics=metrics))
        simulated = False
        models: dict[str, str] = {}
        for role in ("strong", "backbone", "embedding", "difficulty"):
            if role in config.llm:
                models[role] = config.llm[role].model
                simulated = simulated or await is_simulator(config.llm[role].base_url)
        provenance = Provenance(prompt_version=PROMPT_VERSION, models=models, simulated=simulated)
        selector = None
        if "score" in stages:
            selector = await stack.enter_async_context(
                selector_for(config, bootstrap, roles, metrics))
        ctx = PipelineContext(config.pipeline, roles, metrics, provenance,
                              selection=config.selection, selector=selector)
        log.info("worker_starting", stages=list(stages), bootstrap=bootstrap, simulated=simulated)
        await serve_stages(build_stages(ctx, stages), config=config, bootstrap_servers=bootstrap,
                           metrics=metrics, stop=stop, runners_out=runners, on_ready=on_ready)
        return roles.stats()
