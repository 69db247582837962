"""Every benchmark scenario in one invocation, on one embedded broker; one JSON object.

``python benchmarks/run.py [--quick] [--out FILE] [--profile] [--only a,b]``

Scenarios (each also a program of its own; see benchmarks/README.md):

* ``passthrough`` — our runtime vs a plain aiokafka loop on a pass-through hop;
* ``backlog``     — peak RSS of one stage process draining a backlog, at two sizes;
* ``utilization`` — simulator concurrency / capacity in steady state;
* ``e2e``         — reference workload: iterrefine vs its lower bound and the batch
  baseline (``baseline.py``);
* ``overhead``    — CPU per item per hop against a zero-latency simulator;
* ``memory``      — peak RSS of ``iterrefine run`` (and its broker) at 20,000 and
  200,000 items (full run only: it takes several minutes).

The headline numbers are top-level keys (``runtime_vs_raw_ratio``,
``peak_rss_mb_backlog``, ``llm_utilization``, ``e2e_vs_lower_bound``,
``baseline_speedup``, ``overhead_us_per_item_hop``, ``e2e_cli_vs_lower_bound``,
``e2e_cli_startup_s``, and in the full run ``rss_mb_run_20k``, ``rss_mb_run_200k``), each
with its target in
``targets``; the details are under ``scenarios``. With ``--out FILE`` the result is
also written to FILE and drawn to FILE with a ``.png`` suffix. ``--quick`` takes under
3 minutes on 2 cores, the full run under 20.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import backlog
import chart
import e2e
import harness
import memory
import overhead
import passthrough
import utilization

SCENARIOS = ("passthrough", "backlog", "utilization", "e2e", "overhead", "memory")

#: Headline key → (target as text, predicate, where the value comes from).
TARGETS: dict[str, tuple[str, Callable[[float], bool]]] = {
    "runtime_vs_raw_ratio": (">= 0.7", lambda v: v >= 0.7),
    "peak_rss_mb_backlog": ("< 300", lambda v: v < 300),
    "llm_utilization": (">= 0.9", lambda v: v >= 0.9),
    "e2e_vs_lower_bound": ("<= 1.3", lambda v: v <= 1.3),
    "baseline_speedup": ("> 1 (reported)", lambda v: v > 1),
    "overhead_us_per_item_hop": ("reported", lambda v: True),
    "e2e_cli_vs_lower_bound": ("<= 1.3", lambda v: v <= 1.3),
    "e2e_cli_startup_s": ("<= 1.0", lambda v: v <= 1.0),
    "rss_mb_run_20k": ("reported", lambda v: True),
    # Checked in headline(): 10x the input, at most 1.5x the memory, for the run process
    # and for every other process kind (broker = tansu + weed, worker).
    "rss_mb_run_200k": ("<= 1.5 x rss_mb_run_20k (each process kind)", lambda v: True),
}


def _run_scenarios(bench: harness.Bench, only: tuple[str, ...], profile: bool,
                   ) -> dict[str, Any]:
    scenarios: dict[str, Any] = {}

    def attempt(name: str, call: Callable[[], dict[str, Any]]) -> None:
        if name not in only:
            return
        started = time.monotonic()
        print(f"[run] {name} ...", file=sys.stderr, flush=True)
        try:
            scenarios[name] = call()
        except Exception as exc:  # one broken scenario must not lose the others' numbers
            traceback.print_exc()
            scenarios[name] = {"error": f"{type(exc).__name__}: {exc}"}
        scenarios[name]["duration_s"] = round(time.monotonic() - started, 1)
        print(f"[run] {name} done in {scenarios[name]['duration_s']} s", file=sys.stderr,
              flush=True)

    attempt("passthrough", lambda: passthrough.run(bench, profile=profile))
    attempt("backlog", lambda: backlog.run(bench))
    attempt("utilization", lambda: utilization.run(bench))
    attempt("e2e", lambda: e2e.run(bench))
    # LLM stages wait, so they run a task per message: the async contender's cost.
    runtime_us = scenarios.get("passthrough", {}).get("contenders", {}).get(
        "runtime_async", {}).get("cpu_us_per_item")
    attempt("overhead", lambda: overhead.run(bench, runtime_us_per_hop=runtime_us,
                                             profile=profile))
    if not bench.quick:  # 200,000 items through `iterrefine run` take minutes
        attempt("memory", lambda: memory.run(bench))
    return scenarios


def headline(scenarios: dict[str, Any]) -> dict[str, Any]:
    def get(name: str, *path: str) -> Any:
        value: Any = scenarios.get(name, {})
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    values = {
        "runtime_vs_raw_ratio": get("passthrough", "ratio"),
        "peak_rss_mb_backlog": get("backlog", "peak_rss_mb"),
        "llm_utilization": get("utilization", "llm_utilization"),
        "e2e_vs_lower_bound": get("e2e", "ratio"),
        "baseline_speedup": get("e2e", "speedup"),
        "overhead_us_per_item_hop": get("overhead", "overhead_us_per_item_hop"),
        "e2e_cli_vs_lower_bound": get("e2e", "cli_ratio"),
        "e2e_cli_startup_s": get("e2e", "cli_startup_s"),
        "rss_mb_run_20k": get("memory", "by_size", "20000", "peak_rss_mb", "run"),
        "rss_mb_run_200k": get("memory", "by_size", "200000", "peak_rss_mb", "run"),
    }
    if scenarios.get("memory") is None or "error" in scenarios["memory"]:
        del values["rss_mb_run_20k"], values["rss_mb_run_200k"]  # quick runs skip it
    pt = get("passthrough", "contenders") or {}
    details = {
        "runtime_vs_raw_ratio": {
            "runtime_items_per_s": get("passthrough", "contenders", "runtime", "items_per_s"),
            "aiokafka_loop_items_per_s": (pt.get("aiokafka_loop") or {}).get("items_per_s"),
            "runtime_async_items_per_s": (pt.get("runtime_async") or {}).get("items_per_s"),
            "runtime_async_ratio": get("passthrough", "ratio_async"),
        },
        "peak_rss_mb_backlog": {
            size: run["peak_rss_mb"]
            for size, run in (get("backlog", "by_backlog") or {}).items()
        },
        "llm_utilization": {"window_s": get("utilization", "steady_state", "window_s"),
                            "middle_80pct": get("utilization", "middle_80pct_utilization")},
        "e2e_vs_lower_bound": {"wall_s": get("e2e", "iterrefine", "wall_s"),
                               "lower_bound_s": get("e2e", "lower_bound", "lower_bound_s")},
        "baseline_speedup": {"baseline_wall_s": get("e2e", "baseline", "wall_s"),
                             "iterrefine_wall_s": get("e2e", "iterrefine", "wall_s")},
        "overhead_us_per_item_hop": get("overhead", "split"),
        "e2e_cli_vs_lower_bound": {
            "wall_s": get("e2e", "iterrefine_cli", "workers_2", "wall_s"),
            "summary_wall_time_s": get("e2e", "iterrefine_cli", "workers_2",
                                       "summary_wall_time_s"),
            "timeline": get("e2e", "iterrefine_cli", "workers_2", "timeline"),
            "asyncio_script_ratio": get("e2e", "asyncio_script", "ratio_to_lower_bound"),
            "pre_warmed_ratio": get("e2e", "ratio")},
        "e2e_cli_startup_s": {"workers_1_wall_s": get("e2e", "iterrefine_cli", "workers_1",
                                                      "wall_s")},
        "rss_mb_run_20k": {"broker": get("memory", "by_size", "20000", "peak_rss_mb", "broker"),
                           "storage": get("memory", "by_size", "20000", "broker_storage")},
        "rss_mb_run_200k": {
            "broker": get("memory", "by_size", "200000", "peak_rss_mb", "broker"),
            "storage": get("memory", "by_size", "200000", "broker_storage"),
            "growth": get("memory", "growth")},
    }
    targets = {
        key: {"value": value, "target": TARGETS[key][0],
              "met": None if value is None else TARGETS[key][1](value),
              **({"detail": details[key]} if details.get(key) else {})}
        for key, value in values.items()
    }
    small, large = values.get("rss_mb_run_20k"), values.get("rss_mb_run_200k")
    if small and large is not None:
        growth = get("memory", "growth") or {}
        targets["rss_mb_run_200k"]["met"] = large <= 1.5 * small and all(
            growth.get(kind, 0) <= 1.5 for kind in ("broker", "worker"))
    return {**values, "targets": targets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 3 min on 2 cores)")
    parser.add_argument("--out", type=Path, help="also write the JSON here (and FILE.png)")
    parser.add_argument("--profile", action="store_true",
                        help="also record the pass-through and overhead workers with py-spy")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--workdir", type=Path, help="scratch dir for logs and data")
    args = parser.parse_args()
    only = tuple(args.only.split(",")) if args.only else SCENARIOS
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}")
    harness.quiet_logging()
    started = time.monotonic()
    load_start = harness.loadavg()
    date = harness.now_iso()
    sources_start = harness.source_hashes()
    with harness.bench_session(args.quick, args.workdir) as bench:
        scenarios = _run_scenarios(bench, only, args.profile)
    sources_end = harness.source_hashes()
    combined = hashlib.sha256(json.dumps(sources_start, sort_keys=True).encode()).hexdigest()
    result = {
        **headline(scenarios),
        "parameters": {
            "quick": args.quick, "profile": args.profile, "scenarios": list(only),
            "runtime_overrides": dict(harness.BENCH_RUNTIME),
            "note": "runtime defaults except a 3 s session timeout (Tansu completes a group "
                    "join after ~session_timeout/2); startup is outside every timed window",
            # Which scratch directory is machine detail: only that it was a fresh one.
            "workdir": "a fresh temporary directory",
        },
        "machine": harness.machine(),
        "date": date,
        "loadavg_start": load_start,
        "loadavg_end": harness.loadavg(),
        "duration_s": round(time.monotonic() - started, 1),
        "sources": {
            "sha256_12": combined[:12],
            "changed_during_run": sorted(
                f for f in {*sources_start, *sources_end}
                if sources_start.get(f) != sources_end.get(f)),
        },
        "scenarios": scenarios,
    }
    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        chart.draw(result, args.out.with_suffix(".png"))
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
