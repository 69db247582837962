"""CPU per item per topic hop of the whole pipeline, against a zero-latency simulator.

2,000 items (``--quick``: 400) of the reference mix go through the five stages in one
worker process; the simulator (its own process) answers at once with no capacity
limit, so the worker is busy all the time and its CPU time is pure overhead: runtime,
Kafka client, item (de)serialisation, prompt building, LLM client, parsing, logging,
metrics. Measured with ``time.process_time()`` over the window from ingest start to
the last item in a terminal topic (startup excluded; the terminal watcher's reading is
included).

A *hop* is one message consumed and handled by a stage (score 1, route 1, refine and
review 1 each per round, align 1): ``overhead_us_per_item_hop`` = CPU / hops.

Split: ``passthrough.py`` measures the runtime alone (a stage with a pass-through
handler, no LLM) in µs per hop; subtracting that for every hop leaves the LLM path
(prompt, client, parser, stage logic) per LLM call. With ``--profile`` the worker is
also run once more under py-spy and the samples are grouped by component
(``cpu_profile.py``), which splits the LLM path into client, SDK, HTTP and parsing.

Run ``python benchmarks/overhead.py [--quick] [--items N] [--profile]``; prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import cpu_profile
import harness
import msgspec
import simproc

from iterrefine.config import PipelineConfig

LOSE_PROB = 0.632
PIPELINE = {"rescore_refined": False}


def run(bench: harness.Bench, *, items: int | None = None,
        runtime_us_per_hop: float | None = None, profile: bool = False) -> dict[str, Any]:
    n = items or (400 if bench.quick else 2000)
    input_path = harness.write_jsonl(bench.workdir / f"overhead-{n}.jsonl",
                                     harness.reference_records(n))
    load_before = harness.loadavg()
    profiled: dict[str, Any] | None = None
    with simproc.SimProcess(log_path=bench.log("overhead-sim"), latency_ms=0, capacity=0,
                            low_share=1.0, reject_share=0.0, lose_prob=LOSE_PROB) as sim:
        config = harness.bench_config(bench.bootstrap, bench.prefix("overhead"),
                                      pipeline=msgspec.convert(PIPELINE, PipelineConfig))
        sim_cpu_before = sim.cpu_s() or 0.0
        sim.reset()
        worker = simproc.run_pipeline_worker(bench, sim, config, name="overhead-iterrefine",
                                             input_path=input_path, timeout_s=900)
        stats = sim.stats(series=False)
        sim_cpu = (sim.cpu_s() or 0.0) - sim_cpu_before
        knobs = sim.knobs
        if profile:
            raw = bench.workdir / "overhead-profile.txt"
            config = harness.bench_config(bench.bootstrap, bench.prefix("overhead-prof"),
                                          pipeline=msgspec.convert(PIPELINE, PipelineConfig))
            simproc.run_pipeline_worker(bench, sim, config, name="overhead-profile",
                                        input_path=input_path, timeout_s=900,
                                        wrap=harness.py_spy(raw))
            profiled = {"raw": str(raw), **cpu_profile.breakdown(raw)}
    r = worker.result
    simproc.check_pipeline_result(r, "overhead")
    hops = sum(r["handled"].values()) + sum(r["dead_lettered"].values())
    calls = stats["requests_total"]
    per_hop = r["cpu_s"] / hops * 1e6
    result: dict[str, Any] = {
        "parameters": {"items": n, "sim": knobs, "pipeline": PIPELINE,
                       "runtime": dict(harness.BENCH_RUNTIME),
                       "hop": "one message consumed and handled by a stage"},
        "overhead_us_per_item_hop": round(per_hop, 1),
        "cpu_s": r["cpu_s"],
        "wall_s": r["wall_s"],
        "complete": r["arrived"] == r["expected"] == n,
        "hops": hops,
        "hops_by_stage": r["handled"],
        "llm_calls": calls,
        "llm_calls_per_hop": round(calls / hops, 3),
        "items_per_s": round(n / r["wall_s"], 1),
        "cpu_busy_share": round(r["cpu_s"] / r["wall_s"], 3),
        "simulator_cpu_us_per_call": round(sim_cpu / calls * 1e6, 1) if calls else None,
        "loadavg_before": load_before,
        "loadavg_after": harness.loadavg(),
    }
    if runtime_us_per_hop is not None:
        llm_part = max(0.0, r["cpu_s"] * 1e6 - runtime_us_per_hop * hops)
        result["split"] = {
            "runtime_us_per_hop": round(runtime_us_per_hop, 1),
            "llm_path_us_per_hop": round(llm_part / hops, 1),
            "llm_path_us_per_call": round(llm_part / calls, 1) if calls else None,
            "how": "runtime = passthrough.py's runtime_async contender (CPU per item, same run); "
                   "LLM path = the rest (prompt, LLM client, parser, stage logic)",
        }
    if profiled is not None:
        result["profile"] = profiled
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="400 items instead of 2,000")
    parser.add_argument("--items", type=int)
    parser.add_argument("--runtime-us-per-hop", type=float,
                        help="passthrough.py's runtime_async CPU per item, to split the total")
    parser.add_argument("--profile", action="store_true", help="also profile with py-spy")
    args = parser.parse_args()
    harness.quiet_logging()
    with harness.bench_session(args.quick) as bench:
        result = run(bench, items=args.items, runtime_us_per_hop=args.runtime_us_per_hop,
                     profile=args.profile)
    json.dump({"machine": harness.machine(), "date": harness.now_iso(), **result},
              sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
