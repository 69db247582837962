"""``iterrefine worker STAGE...``: long-running stage workers for deployments."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from iterrefine.cli.common import (
    NO_LLM_MESSAGE,
    add_kafka_args,
    add_llm_args,
    config_from_args,
    resolve_bootstrap,
)
from iterrefine.cli.sim import add_sim_args, sim_config_from_args
from iterrefine.config import Config
from iterrefine.consumers import STAGE_NAMES
from iterrefine.errors import ConfigError
from iterrefine.observe.logging import configure_logging

if TYPE_CHECKING:
    from iterrefine.graph.spec import StageGraph
    from iterrefine.sim import SimConfig


def register(subparsers: Any) -> None:  # argparse's _SubParsersAction is private
    parser = subparsers.add_parser(
        "worker",
        help="run pipeline stages until SIGTERM (one consumer group per stage)",
        description=(
            "Run one or more stages as a long-lived member of their consumer groups. Start "
            "more processes with the same stage to scale out; SIGTERM drains and commits. "
            "LLMs: real endpoints (--llm-base-url, --strong-model, --backbone-model or the "
            "config's [llm.*] tables); or --llm sim, the simulator in this process; or one "
            "`iterrefine sim-llm` shared by every worker: --llm-base-url "
            "http://127.0.0.1:8765/v1 --strong-model sim-strong --backbone-model "
            "sim-backbone (it answers any model name and marks the output simulated)."
        ),
    )
    # No argparse choices: user stages ([[stages]] in --config) are known only once the
    # config is read; unknown names fail then, listing the graph's stages.
    parser.add_argument("stages", nargs="+", metavar="STAGE",
                        help=f"one or more of {', '.join(STAGE_NAMES)} (and the config's own "
                        "stages), or all")
    parser.add_argument("--metrics-port", type=int, metavar="N",
                        help="serve /metrics, /healthz and /readyz on this port")
    parser.add_argument("--metrics-host", metavar="ADDR",
                        help="address the metrics endpoint binds (default 127.0.0.1, this "
                        "machine only: it has no authentication); in a container use 0.0.0.0 "
                        "so that Prometheus and the probes can reach it")
    parser.add_argument("--group-instance-id", metavar="ID",
                        help="static group membership id, unique per worker process: on Kafka "
                        "a restart within the session timeout keeps its partitions without a "
                        "rebalance (ignored, with a warning, on the embedded Tansu broker, whose "
                        "groups never settle with static members)")
    add_kafka_args(parser)
    add_llm_args(parser)
    add_sim_args(parser)
    parser.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    from iterrefine.app.pipeline import load_graph, missing_roles

    configure_logging(json=args.log_json, level=args.log_level)
    config = config_from_args(args)
    graph = load_graph(config)
    sim = sim_config_from_args(args)
    if sim is None and missing_roles(config, graph.select(args.stages)):
        raise ConfigError(NO_LLM_MESSAGE)
    bootstrap = resolve_bootstrap(config)
    asyncio.run(_serve(config, bootstrap, args.stages, graph, sim))
    return 0


async def _serve(config: Config, bootstrap: str, stages: list[str], graph: StageGraph,
                 sim: SimConfig | None) -> None:
    """Serve until SIGTERM, on the simulator in this process when asked."""
    from iterrefine.app.pipeline import serve_pipeline

    async with contextlib.AsyncExitStack() as stack:
        if sim is not None:
            from iterrefine.app.run import sim_roles
            from iterrefine.sim import SimServer

            server = await stack.enter_async_context(SimServer(sim, port=0))
            config = sim_roles(config, server.base_url, sim)
        # After SIGTERM every stage commits, then all stay in their groups a moment
        # (runtime.leave_delay_s), so that workers stopped together commit before any
        # leaves: noida-db refuses the commits of the generation a member left.
        leave = asyncio.Event()

        def leave_soon() -> None:
            asyncio.get_running_loop().call_later(config.runtime.leave_delay_s, leave.set)

        await serve_pipeline(config, bootstrap, stages=stages, graph=graph,
                             metrics_port=config.metrics_port,
                             simulated=True if sim is not None else None,
                             leave=leave, on_drained=leave_soon)
