"""``iterrefine worker STAGE...``: long-running stage workers for deployments."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from iterrefine.cli.common import (
    NO_LLM_MESSAGE,
    add_kafka_args,
    add_llm_args,
    config_from_args,
    resolve_bootstrap,
)
from iterrefine.consumers import STAGE_NAMES
from iterrefine.errors import ConfigError
from iterrefine.observe.logging import configure_logging


def register(subparsers: Any) -> None:  # argparse's _SubParsersAction is private
    parser = subparsers.add_parser(
        "worker",
        help="run pipeline stages until SIGTERM (one consumer group per stage)",
        description=(
            "Run one or more stages as a long-lived member of their consumer groups. Start "
            "more processes with the same stage to scale out; SIGTERM drains and commits."
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
    parser.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    from iterrefine.app.pipeline import load_graph, missing_roles, serve_pipeline

    configure_logging(json=args.log_json, level=args.log_level)
    config = config_from_args(args)
    graph = load_graph(config)
    if missing_roles(config, graph.select(args.stages)):
        raise ConfigError(NO_LLM_MESSAGE)
    bootstrap = resolve_bootstrap(config)
    asyncio.run(serve_pipeline(config, bootstrap, stages=args.stages, graph=graph,
                               metrics_port=config.metrics_port))
    return 0
