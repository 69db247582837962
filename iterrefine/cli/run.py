"""``iterrefine run INPUT -o OUTPUT``: the main job, on embedded defaults."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import structlog
from rich.console import Console
from rich.table import Table

from iterrefine.app import exit_codes
from iterrefine.app.exit_codes import run_exit_code, uniform_outcome
from iterrefine.app.pricing import cost_summary, describe_cost
from iterrefine.cli.common import add_kafka_args, add_llm_args, config_from_args, require_llm
from iterrefine.cli.progress import run_progress
from iterrefine.config import Config
from iterrefine.errors import ConfigError
from iterrefine.io.inputs import FORMATS_HELP, INPUT_FORMATS, InputSpec, open_input
from iterrefine.io.outputs import SHAPES, check_output
from iterrefine.observe.logging import configure_logging
from iterrefine.observe.proctime import process_started_at
from iterrefine.sim import SimConfig


def register(subparsers: Any) -> None:  # argparse's _SubParsersAction is private
    parser = subparsers.add_parser(
        "run",
        help="curate a dataset file end to end (embedded broker unless --bootstrap)",
        description=(
            "Ingest INPUT (JSON lines, a JSON array, Parquet, CSV or a Hugging Face dataset; "
            "Alpaca, Dolly, OpenAI messages or ShareGPT records), score, route, "
            "refine, review and align every item, wait until each reached a terminal topic, "
            "and write curated items to OUTPUT, with rejected and dead-lettered items beside it."
        ),
    )
    add = parser.add_argument
    add("input", type=Path, metavar="INPUT")
    add("-o", "--output", type=Path, required=True, metavar="OUTPUT",
        help="curated items, .jsonl or .parquet by its name; the rejected items beside it "
        "(OUTPUT.rejected.jsonl/.parquet) and dead letters in OUTPUT.dlq.jsonl")
    add("--input-format", choices=INPUT_FORMATS, help=f"default: by name. {FORMATS_HELP}")
    add("--split", help="the split of a Hugging Face dataset (default train)")
    add("--shape", choices=SHAPES, default="full",
        help="rows written: full (with lineage, default), or training-ready alpaca, messages, "
        "sharegpt")
    add("--limit", type=int, metavar="N", help="a trial: only the first N records")
    add("--sample", type=int, metavar="N", help="a trial: N records drawn at random")
    add("--seed", type=int, default=0, help="seed of --sample (0)")
    add("--summary", type=Path, metavar="FILE", help="also write the summary as JSON")
    add("--metrics-port", type=int, metavar="N",
        help="serve /metrics, /healthz and /readyz for all stages while running")
    add("--timeout-s", type=float, help="stop waiting after this many seconds")
    add("--workers", type=int, default=1, metavar="N",
        help="stage processes (default 1): N - 1 more join this one's consumer groups; each "
        "role's LLM limits apply per process. One process sends a few hundred LLM calls a "
        "second at most, so use up to one per core for large inputs")
    add("--broker-storage", choices=["auto", "memory", "disk"],
        help="where the run's own embedded broker keeps records: memory (fastest, grows with "
        "the input), disk (a scratch store under --data-dir, deleted after the run: flat "
        "memory), or auto (default): disk for inputs of [broker] disk_above_mb (1 MB) and more")
    add("--no-progress", action="store_true", help="no progress bar")
    add("--allow-uniform-outcome", action="store_true",
        help="exit as usual when every item ended the same way (all rejected, or all "
        "dead-lettered); by default that is reported as a problem with exit code 6")
    add("--llm", choices=["sim"], help="sim: start the built-in LLM simulator (not a model)")
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
    add_kafka_args(parser)
    add_llm_args(parser)
    parser.set_defaults(func=cmd_run)


def _sim_config(args: argparse.Namespace) -> SimConfig | None:
    if args.llm != "sim":
        return None
    return SimConfig(
        latency_ms=args.sim_latency_ms, jitter_ms=args.sim_jitter_ms, capacity=args.sim_capacity,
        low_share=args.sim_low_share, lose_prob=args.sim_lose_prob,
        fault_429=args.sim_fault_429, fault_500=args.sim_fault_500,
        fault_malformed=args.sim_fault_malformed, fault_truncated=args.sim_fault_truncated,
        retry_after_s=0.2,
    )


def cmd_run(args: argparse.Namespace) -> int:
    # --workers children first: they import on another core while this process does.
    prespawned = None
    if args.workers > 1 and args.input.exists():
        from iterrefine.app.prespawn import Prespawned

        prespawned = Prespawned(args.workers - 1)
    try:
        return _run(args, prespawned)
    finally:
        if prespawned is not None:
            prespawned.close()  # only if the run never adopted them


def _run(args: argparse.Namespace, prespawned: Any) -> int:
    from iterrefine.app.run import RunOptions, run_pipeline  # heavy imports only for this command

    configure_logging(json=args.log_json, level=args.log_level)
    config = config_from_args(args)
    sim = _sim_config(args)
    if sim is None:
        require_llm(config)
    check_output(args.output, args.shape)
    spec = InputSpec(str(args.input), format=args.input_format, limit=args.limit,
                     sample=args.sample, seed=args.seed, split=args.split)
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    options = RunOptions(input=args.input, output=args.output, sim=sim,
                         metrics_port=config.metrics_port, timeout_s=args.timeout_s,
                         workers=args.workers, started_at=process_started_at(),
                         prespawned=prespawned, input_spec=spec, shape=args.shape)
    console = Console(stderr=True)
    show = not args.no_progress and console.is_terminal
    with run_progress(console, show=show, log_json=args.log_json,
                      log_level=args.log_level) as progress:
        task = progress.add_task("items", total=None)

        async def main() -> Any:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, _stop_or_force, stop)
            return await run_pipeline(
                config, options, stop=stop,
                on_ingested=lambda n: progress.update(task, total=n),
                on_progress=lambda n: progress.advance(task, n),
            )

        result = asyncio.run(main())
    summary = result.summary
    trial = spec.limit is not None or spec.sample is not None
    summary["cost"] = cost_summary(summary["llm"], config.llm, items_run=summary["items_in"],
                                   items_total=_input_count(spec) if trial else None)
    if args.summary:
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        args.summary.write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(Console(), summary, result.paths)
    for problem in result.ingest.problems[:10]:
        print(f"  bad input: {problem}", file=sys.stderr)
    ingest = result.ingest
    # Invalid and duplicate input records have a DLQ row each; they are not processing faults.
    invalid = ingest.invalid + ingest.duplicate_ids + ingest.duplicate_records
    code = run_exit_code(summary, invalid_input=invalid,
                         allow_uniform=args.allow_uniform_outcome)
    uniform = uniform_outcome(summary, invalid_input=invalid)
    if uniform is not None:
        _say_uniform(uniform, summary, result.paths, allowed=args.allow_uniform_outcome)
    if summary.get("aborted"):
        print(f"iterrefine: error: {summary['aborted']}", file=sys.stderr)
    if not result.complete:
        print(f"iterrefine: {summary['pending']} items did not finish; "
              f"{_where_unfinished_items_are(config)}", file=sys.stderr)
    elif code == exit_codes.UNIFORM_OUTCOME:
        pass  # said above
    elif code == exit_codes.DEAD_LETTERED:
        print(f"iterrefine: {summary['dlq']} items were dead-lettered (see {result.paths.dlq}"
              " and the dlq reasons above); exit code 1", file=sys.stderr)
    return code


def _say_uniform(outcome: str, summary: dict[str, Any], paths: Any, *, allowed: bool) -> None:
    """Every item ended the same way: say so loudly, with where to look."""
    if outcome == "rejected":
        reasons = sorted(summary.get("outcomes", {}).items())
        what = (f"all {summary['rejected']} items were rejected (see {paths.rejected}; "
                f"outcomes: {', '.join(f'{k} {v}' for k, v in reasons)}): check the judge "
                "model and the task filter before trusting this")
    else:
        what = (f"all {summary['dlq']} items were dead-lettered (see {paths.dlq} and the dlq "
                "reasons above): check the model's answers (raw_answer in the DLQ rows)")
    structlog.get_logger("iterrefine.run").error("run_uniform_outcome", outcome=outcome,
                                                  allowed=allowed)
    tail = "" if allowed else "; exit code 6 (--allow-uniform-outcome accepts it)"
    print(f"iterrefine: WARNING: {what}{tail}", file=sys.stderr)


def _stop_or_force(stop: asyncio.Event) -> None:
    """First SIGINT/SIGTERM: drain and stop. A second one: leave now."""
    if not stop.is_set():
        print("iterrefine: stopping: letting in-flight work finish (press Ctrl-C again to "
              "exit at once)", file=sys.stderr)
        stop.set()
        return
    print("iterrefine: exiting now without draining; rerun the same command to finish "
          "(answers already received are cached)", file=sys.stderr)
    sys.stderr.flush()
    # The embedded broker and --workers children die with this process (PR_SET_PDEATHSIG).
    os._exit(exit_codes.FORCED)


def _where_unfinished_items_are(config: Config) -> str:
    """The truth about unfinished items, which depends on where the broker lives."""
    from iterrefine.broker.state import find_running_broker

    cache = ("the answers already received are in the LLM response cache, so rerunning the "
             "same command pays only for the calls not yet answered"
             if config.cache.mode != "off" else
             "the response cache is off (--no-cache), so a rerun pays for every call again")
    if not config.kafka.bootstrap_servers and find_running_broker(config.data_dir) is None:
        return (f"the run's own embedded broker was stopped with it (its storage is discarded), "
                f"so their pipeline state is lost; {cache}")
    return f"their state is in Kafka and a later run or worker picks them up; {cache}"


def print_summary(console: Console, summary: dict[str, Any], paths: Any) -> None:
    title = "iterrefine run" + (" — SIMULATED LLM (not a model)" if summary["simulated"] else "")
    table = Table(title=title, show_header=False)
    table.add_row("items in", str(summary["items_in"]))
    table.add_row("curated", f"{summary['curated']}  → {paths.curated}")
    table.add_row("rejected", f"{summary['rejected']}  → {paths.rejected}")
    table.add_row("dlq", f"{summary['dlq']}  → {paths.dlq}")
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(summary["outcomes"].items()))
    table.add_row("outcomes", outcomes or "-")
    for kind in ("converged", "exhausted"):
        rounds = summary["rounds"][kind]
        table.add_row(f"rounds ({kind})",
                      ", ".join(f"{r}: {n}" for r, n in rounds.items()) or "-")
    quality = summary["quality"]
    table.add_row("judge score mean", f"before {quality['before']['mean']}, "
                  f"after refinement {quality['after']['mean']}")
    for role, stats in summary["llm"].items():
        table.add_row(f"LLM {role}", f"{stats['requests']} calls, {stats['errors']} errors, "
                      f"{stats['prompt_tokens']}+{stats['completion_tokens']} tokens, "
                      f"p50 {stats['latency_s'].get('p50')} s")
        if stats.get("cache_hits") or stats.get("cache_misses"):
            table.add_row(f"cache {role}", f"{stats['cache_hits']} hits (not paid), "
                          f"{stats['cache_misses']} misses, "
                          f"{stats['cache_tokens_saved']} tokens saved")
    unreadable = {task: row.get("unreadable", 0) for task, row in
                  summary.get("llm_answers", {}).items() if row.get("unreadable")}
    if unreadable:
        table.add_row("unreadable answers", ", ".join(f"{k} {v}" for k, v in unreadable.items()))
    if summary.get("rescore_failures"):
        table.add_row("re-score failed", f"{summary['rescore_failures']} refined items "
                      "curated without a final score")
    if summary.get("truncated"):
        table.add_row("cut off at max_tokens", ", ".join(
            f"{k} {v}" for k, v in sorted(summary["truncated"].items())))
    if summary["dlq_reasons"]:
        table.add_row("dlq reasons", ", ".join(f"{k} {v}" for k, v in
                                               sorted(summary["dlq_reasons"].items())))
    for name, text in describe_cost(summary["cost"]) if "cost" in summary else ():
        table.add_row(name, text)
    table.add_row("wall time", f"{summary['wall_time_s']} s")
    console.print(table)
    if "preset" in summary:
        console.print(preset_table(summary["preset"]))


def _input_count(spec: InputSpec) -> int | None:
    """The whole input's record count for a trial's estimate (cheap: no validation)."""
    return open_input(InputSpec(spec.source, format=spec.format, split=spec.split)).count()


def preset_table(preset: dict[str, Any]) -> Table:
    """The preset's settings: its value, the value the run used, and why they differ."""
    table = Table(title=f"preset {preset['name']}")
    for column in ("setting", "preset", "used", "source"):
        table.add_column(column)
    for row in preset["settings"]:
        used = "-" if row["effective"] is None else json.dumps(row["effective"])
        source = {"unavailable": "not in this build", "overridden": "overridden by you"}.get(
            row["source"], row["source"])
        table.add_row(row["key"], json.dumps(row["preset"]), used, source)
    return table
