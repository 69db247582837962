"""``iterrefine sim-llm``: run the OpenAI-compatible LLM simulator in the foreground.

For demos, tests, benchmarks and chaos runs; it is not a model (see iterrefine.sim).
Stops cleanly on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from typing import Any

import structlog

from iterrefine.observe.logging import configure_logging
from iterrefine.sim import SimConfig

log = structlog.get_logger()

DEFAULT_PORT = 8765
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def add_sim_args(parser: argparse.ArgumentParser) -> None:
    """``--llm sim`` and its knobs: the simulator in this process (``run``, ``worker``)."""
    add = parser.add_argument
    add("--llm", choices=["sim"], help="sim: start the built-in LLM simulator in this process "
        "(not a model; output is marked simulated)")
    add("--sim-latency-ms", type=float, default=100.0, help="simulator mean latency (100)")
    add("--sim-jitter-ms", type=float, default=50.0, help="simulator latency jitter (50)")
    add("--sim-capacity", type=int, default=64, help="simulator concurrent capacity (64)")
    add("--sim-low-share", type=float, default=0.5, help="share judged low quality (0.5)")
    add("--sim-lose-prob", type=float, default=0.5, help="chance a revision loses a round")
    add("--sim-fault-429", type=float, default=0.0, help="share of 429 answers")
    add("--sim-fault-500", type=float, default=0.0, help="share of 500 answers")
    add("--sim-fault-malformed", type=float, default=0.0, help="share of unreadable answers")
    add("--sim-fault-truncated", type=float, default=0.0,
        help="share of answers cut at max_tokens (finish_reason length)")


def sim_config_from_args(args: argparse.Namespace) -> SimConfig | None:
    """The simulator ``--llm sim`` asks for, or None."""
    if getattr(args, "llm", None) != "sim":
        return None
    return SimConfig(
        latency_ms=args.sim_latency_ms, jitter_ms=args.sim_jitter_ms, capacity=args.sim_capacity,
        low_share=args.sim_low_share, lose_prob=args.sim_lose_prob,
        fault_429=args.sim_fault_429, fault_500=args.sim_fault_500,
        fault_malformed=args.sim_fault_malformed, fault_truncated=args.sim_fault_truncated,
        retry_after_s=0.2,
    )


def register(subparsers: Any) -> None:  # argparse's _SubParsersAction is private
    defaults = SimConfig()
    parser = subparsers.add_parser(
        "sim-llm",
        help="run the OpenAI-compatible LLM simulator (a test instrument, not a model)",
        description=(
            "Serve deterministic answers in iterrefine's prompt formats with configurable "
            "latency, capacity and fault injection. Output made with it is marked as simulated. "
            "Point workers at it with --llm-base-url http://HOST:PORT/v1 --strong-model "
            "sim-strong --backbone-model sim-backbone (any model name is answered)."
        ),
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; no auth!)")
    add("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any)")
    add("--latency-ms", type=float, default=defaults.latency_ms, help="mean service time")
    add("--jitter-ms", type=float, default=defaults.jitter_ms, help="uniform ± jitter")
    add(
        "--capacity",
        type=int,
        default=defaults.capacity,
        help=f"requests served at once, more queue (default {defaults.capacity}; 0 = no limit)",
    )
    add("--low-share", type=float, default=defaults.low_share, help="share judged low quality")
    add("--reject-share", type=float, default=defaults.reject_share, help="share judged unusable")
    add(
        "--lose-prob",
        type=float,
        default=defaults.lose_prob,
        help="probability a revision loses its review, per round",
    )
    add("--tie-share", type=float, default=defaults.tie_share, help="share of won reviews as Tie")
    add("--non-reasoning-share", type=float, default=defaults.non_reasoning_share,
        help="share the judge says involve no reasoning (the task filter)")
    add("--embedding-dim", type=int, default=defaults.embedding_dim,
        help="dimensions of /v1/embeddings vectors")
    add("--embedding-clusters", type=int, default=defaults.embedding_clusters,
        help="planted clusters of /v1/embeddings vectors")
    add("--embedding-noise", type=float, default=defaults.embedding_noise,
        help="norm of the noise around a planted centre (unit vectors)")
    add("--embedding-per-token", action="store_true",
        help="answer one vector per word, as llama.cpp's server does for some models")
    add("--fault-429", type=float, default=0.0, help="rate of 429 answers (with Retry-After)")
    add("--fault-500", type=float, default=0.0, help="rate of 500 answers")
    add("--fault-hang", type=float, default=0.0, help="rate of requests hanging for --hang-s")
    add("--fault-malformed", type=float, default=0.0, help="rate of unparseable answers")
    add("--fault-truncated", type=float, default=0.0,
        help="rate of answers cut at max_tokens (finish_reason length)")
    add("--fault-looped", type=float, default=0.0,
        help="rate of answers that loop (blank lines) until max_tokens")
    add("--hang-s", type=float, default=defaults.hang_s, help="how long a hang lasts")
    add("--retry-after-s", type=float, default=defaults.retry_after_s, help="Retry-After on 429")
    add("--seed", type=int, default=defaults.seed, help="seed of latency jitter and faults")
    add("--require-key-env", metavar="VAR",
        help="answer 401 unless the bearer key equals this variable's value (to rehearse a "
        "wrong key)")
    add(
        "--request-log-size",
        type=int,
        default=defaults.request_log_size,
        help="requests kept for GET /requests",
    )
    parser.set_defaults(func=cmd_sim_llm)


def config_from_args(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        latency_ms=args.latency_ms,
        jitter_ms=args.jitter_ms,
        capacity=args.capacity,
        low_share=args.low_share,
        reject_share=args.reject_share,
        lose_prob=args.lose_prob,
        tie_share=args.tie_share,
        non_reasoning_share=args.non_reasoning_share,
        embedding_dim=args.embedding_dim,
        embedding_clusters=args.embedding_clusters,
        embedding_noise=args.embedding_noise,
        embedding_per_token=args.embedding_per_token,
        fault_429=args.fault_429,
        fault_500=args.fault_500,
        fault_hang=args.fault_hang,
        fault_malformed=args.fault_malformed,
        fault_truncated=args.fault_truncated,
        fault_looped=args.fault_looped,
        hang_s=args.hang_s,
        retry_after_s=args.retry_after_s,
        seed=args.seed,
        request_log_size=args.request_log_size,
        api_key=os.environ.get(args.require_key_env) if args.require_key_env else None,
    )


def cmd_sim_llm(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    configure_logging()
    asyncio.run(_serve(config, args.host, args.port))
    return 0


async def _serve(config: SimConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if host not in _LOOPBACK:
        log.warning("sim_llm.exposed", host=host, note="the simulator has no authentication")
    # Imported here: the server pulls in aiohttp.web, which `run` on a real endpoint never needs.
    from iterrefine.sim import SimServer

    async with SimServer(config, host=host, port=port) as sim:
        log.info(
            "sim_llm.listening",
            base_url=sim.base_url,
            note="LLM simulator, not a model",
            **_knobs(config),
        )
        await stop.wait()
    log.info("sim_llm.stopped")


def _knobs(config: SimConfig) -> dict[str, Any]:
    return {
        "latency_ms": config.latency_ms,
        "jitter_ms": config.jitter_ms,
        "capacity": config.capacity,
        "low_share": config.low_share,
        "lose_prob": config.lose_prob,
        "faults": config.fault_total,
    }
