"""``iterrefine run INPUT -o OUTPUT``: the main job, on embedded defaults."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
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
from iterrefine.app.pricing import describe_cost
from iterrefine.cli._run_summary import cost_cap_message, progress_every_s, quality_rows
from iterrefine.cli.common import add_kafka_args, add_llm_args, config_from_args, require_llm
from iterrefine.cli.progress import run_progress
from iterrefine.cli.sim import add_sim_args, sim_config_from_args
from iterrefine.config import Config
from iterrefine.errors import ConfigError, EmptyInput
from iterrefine.io.guard import OutputGuard
from iterrefine.io.inputs import FORMATS_HELP, INPUT_FORMATS, InputSpec
from iterrefine.io.outputs import SHAPES, check_output, output_paths
from iterrefine.observe.logging import configure_logging
from iterrefine.observe.proctime import command_started_at


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
        help="curated items, by its name JSON lines (.jsonl), one JSON array (.json) or "
        "Parquet (.parquet); the rejected items beside it (OUTPUT.rejected.jsonl/.json/"
        ".parquet) and dead letters in OUTPUT.dlq.jsonl")
    add("--overwrite", action="store_true",
        help="replace the results of an earlier run at OUTPUT (and --summary); without it "
        "run stops if they exist (a cut-short run's are replaced by its rerun)")
    add("--input-format", choices=INPUT_FORMATS, help=f"default: by name. {FORMATS_HELP}")
    add("--split", help="the split of a Hugging Face dataset (default train)")
    add("--shape", choices=SHAPES, default="full",
        help="rows written: full (with lineage, default), or training-ready alpaca, messages, "
        "sharegpt")
    add("--limit", type=int, metavar="N", help="a trial: only the first N records (not a "
        "sample: its estimate for the whole input has no interval; prefer --sample)")
    add("--sample", type=int, metavar="N", help="a trial: N records drawn at random; the "
        "summary estimates the whole input's calls, tokens and money with a 90%% interval")
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
    add("--progress-every-s", type=float, metavar="S",
        help="log a run_progress event every S seconds (items done/total, rate, ETA, calls, "
        "tokens, money); default 10 when stderr is not a terminal, else none")
    add("--save-dataset", type=Path, metavar="DIR",
        help="also write the curated rows as a Hugging Face save_to_disk folder with a dataset "
        "card (README.md) made from the summary (needs the hf extra)")
    add("--max-cost", type=float, metavar="MONEY",
        help="stop new work once the LLM calls cost this much at the roles' prices "
        "(price_in_per_mtok/price_out_per_mtok; config key max_cost): exit code 4")
    add_sim_args(parser)
    add_kafka_args(parser)
    add_llm_args(parser)
    parser.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from iterrefine.app.prespawn import Prespawned, sweep_orphaned_workdirs

    sweep_orphaned_workdirs()  # what an earlier run killed by SIGKILL left in the temp dir
    # --workers children first: they import on another core while this process does.
    prespawned = None
    if args.workers > 1 and args.input.exists():
        prespawned = Prespawned(args.workers - 1)
    try:
        return _run(args, prespawned)
    except EmptyInput as exc:  # not a usage error (2), not a success (0)
        print(f"iterrefine: {exc}", file=sys.stderr)
        return exit_codes.EMPTY_INPUT
    finally:
        if prespawned is not None:
            prespawned.close()  # only if the run never adopted them


def _run(args: argparse.Namespace, prespawned: Any) -> int:
    from iterrefine.app.run import RunOptions, run_pipeline  # heavy imports only for this command

    configure_logging(json=args.log_json, level=args.log_level)
    config = config_from_args(args)
    sim = sim_config_from_args(args)
    if sim is None:
        require_llm(config)
    check_output(args.output, args.shape)
    guard = OutputGuard.check(output_paths(args.output).curated, _others(args),
                              overwrite=args.overwrite)
    spec = InputSpec(str(args.input), format=args.input_format, limit=args.limit,
                     sample=args.sample, seed=args.seed, split=args.split)
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    options = RunOptions(input=args.input, output=args.output, sim=sim,
                         metrics_port=config.metrics_port, timeout_s=args.timeout_s,
                         workers=args.workers, started_at=command_started_at(),
                         prespawned=prespawned, input_spec=spec, shape=args.shape)
    if config.kafka.bootstrap_servers:
        print(f"iterrefine: running on the Kafka cluster at {config.kafka.bootstrap_servers}, "
              f"topic prefix {config.kafka.topic_prefix} (no broker of its own); its stages "
              "take only this run's records, and a busy pipeline there is refused",
              file=sys.stderr)
    console = Console(stderr=True)
    show = not args.no_progress and console.is_terminal
    options = dataclasses.replace(
        options, progress_every_s=progress_every_s(args, console.is_terminal),
        dataset_dir=args.save_dataset)
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
    guard.finished(complete=result.complete)
    summary = result.summary
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
    if summary.get("stopped_by_cost_cap"):
        print(cost_cap_message(summary["stopped_by_cost_cap"]), file=sys.stderr)
    if not result.complete:
        print(f"iterrefine: {summary['pending']} items did not finish; "
              f"{_where_unfinished_items_are(config)}", file=sys.stderr)
    elif code == exit_codes.UNIFORM_OUTCOME:
        pass  # said above
    elif code == exit_codes.DEAD_LETTERED:
        print(f"iterrefine: {summary['dlq']} items were dead-lettered (see {result.paths.dlq}"
              " and the dlq reasons above); exit code 1", file=sys.stderr)
    return code


def _others(args: argparse.Namespace) -> list[Path]:
    """The files a run writes beside its curated file (README "Output")."""
    paths = output_paths(args.output)
    return [paths.rejected, paths.dlq, *([args.summary] if args.summary else [])]


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
    cache = ("the answers already received are in the LLM response cache, so rerunning the "
             "same command pays only for the calls not yet answered"
             if config.cache.mode != "off" else
             "the response cache is off (--no-cache), so a rerun pays for every call again")
    if not config.kafka.bootstrap_servers:
        return (f"the run's own embedded broker was stopped with it (its storage is discarded), "
                f"so their pipeline state is lost; {cache}")
    return f"their state is in Kafka and a later run or worker picks them up; {cache}"


def _selection_line(selection: dict[str, Any]) -> str:
    """How the quota's clusters were made: the mode, how many items, k (and why)."""
    line = f"{selection['mode']}: {selection['clustered']} items clustered"
    if selection.get("k") is not None:
        line += f", k = {selection['k']}"
        if selection.get("note"):
            line += f" (configured {selection['k_configured']}: input small for it)"
    if selection.get("unclustered_warmup"):
        line += f", {selection['unclustered_warmup']} before the first model (warm-up)"
    return line


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
    if summary.get("selection", {}).get("mode"):
        table.add_row("selection", _selection_line(summary["selection"]))
    for name, text in quality_rows(summary["quality"]):
        table.add_row(name, text)
    for role, stats in summary["llm"].items():
        table.add_row(f"LLM {role}", f"{stats['requests']} calls, {stats['errors']} errors, "
                      f"{stats['prompt_tokens']}+{stats['completion_tokens']} tokens, "
                      f"p50 {stats['latency_s'].get('p50')} s")
        if stats.get("cache_hits") or stats.get("cache_misses"):
            table.add_row(f"cache {role}", f"{stats['cache_hits']} hits (not paid), "
                          f"{stats['cache_misses']} misses, "
                          f"{stats['cache_tokens_saved']} tokens saved"
                          + (f", {stats['cache_rejected']} entries refused (seal mismatch)"
                             if stats.get("cache_rejected") else ""))
        if stats.get("hedged"):
            table.add_row(f"hedged {role}", f"{stats['hedged']} requests sent again (no answer "
                          "in the usual time)")
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


def preset_table(preset: dict[str, Any]) -> Table:
    """The preset's settings: its value, the value the run used, and why they differ."""
    table = Table(title=f"preset {preset['name']}")
    # Keys whole (`pipeline.max_tokens.…` six times said nothing); values fold instead.
    widest = max((len(row["key"]) for row in preset["settings"]), default=0)
    table.add_column("setting", no_wrap=True, min_width=widest)
    for column in ("preset", "used", "source"):
        table.add_column(column, overflow="fold")
    for row in preset["settings"]:
        used = "-" if row["effective"] is None else json.dumps(row["effective"])
        source = {"unavailable": "not in this build", "overridden": "overridden by you"}.get(
            row["source"], row["source"])
        table.add_row(row["key"], json.dumps(row["preset"]), used, source)
    return table
