"""The reference workload end to end: iterrefine vs its lower bound and the batch baseline.

Workload: 200 Dolly-sample items, every one judged low quality (simulator
``--low-share 1.0 --reject-share 0``), each review lost with probability 0.632 per round
(so ≈ 0.632² ≈ 40 % of the items need all 3 rounds), LLM latency 500 ms, capacity 256
requests at once. The simulator runs in its own process; both contenders call it in
the same run, one after the other, with its counters reset in between:

* ``iterrefine``: the five stages in ``PROCESSES`` worker processes (``pipeline_worker.py``
  starts the second as ``iterrefine run --workers 2`` does, in the same consumer groups;
  one process per core of the reference machine: the openai client costs ~1.5 ms of
  CPU per call, so one process needs ~0.3 s to send a wave of 200 calls), items
  ingested once every stage has its partitions; wall time = ingest start → last item
  in a terminal topic (startup reported apart). ``--processes 1`` measures one process;
* ``baseline``: ``baseline.py``, the paper's scripts' execution shape (phases with
  barriers, fixed thread pools, sync openai client), same prompts and parsers.

``rescore_refined`` is off for both: the paper does not score refined items again.

Lower bound (per contender, from its own run): an item's LLM calls are sequential —
score 1, evaluate 2 (backbone answer, grade), per round 3 (refine, backbone answer,
judge), align 1 if a revision won — so no schedule beats the longest item's chain of
calls × latency; and the simulator serves ``capacity`` calls at once, so none beats
total calls × latency / capacity either. ``lower_bound_s`` is the larger of the two,
with the chain read from each item's recorded rounds and outcome and the total from
the simulator's own request count.

Run ``python benchmarks/e2e.py [--quick] [--items 200]``; prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import cli_run
import harness
import msgspec
import simproc

from iterrefine.config import PipelineConfig
from iterrefine.tasks.prompts import build_messages

LATENCY_MS = 500.0
CAPACITY = 256
#: P(lose round 1 and round 2) = p² ≈ 0.4.
LOSE_PROB = 0.632
PIPELINE = {"rescore_refined": False}
PROCESSES = 2
#: iterrefine runs; the median one is reported (the baseline runs once: it takes 35 s).
REPEATS = 3


def chain_calls(item: dict[str, Any], *, rescore: bool) -> int:
    """LLM calls ``item`` needed one after another (see the module docstring)."""
    if item["quality"] != "low":
        return 1  # scored, then kept as high or rejected
    refined = item["status"] == "refined"
    rounds: int = item["rounds"]
    return 1 + 2 + 3 * rounds + (1 if refined else 0) + (1 if refined and rescore else 0)


def lower_bound(items: list[dict[str, Any]], total_calls: int, *, latency_ms: float,
                capacity: int, rescore: bool) -> dict[str, Any]:
    chains = [chain_calls(item, rescore=rescore) for item in items]
    latency_s = latency_ms / 1000
    chain_s = max(chains) * latency_s
    capacity_s = total_calls * latency_s / capacity if capacity else 0.0
    return {
        "lower_bound_s": round(max(chain_s, capacity_s), 4),
        "bound_by": "longest_item_chain" if chain_s >= capacity_s else "capacity",
        "longest_chain_calls": max(chains),
        "longest_chain_s": round(chain_s, 4),
        "total_calls": total_calls,
        "calls_from_chains": sum(chains),
        "capacity_bound_s": round(capacity_s, 4),
    }


def outcome_mix(items: list[dict[str, Any]]) -> dict[str, Any]:
    low = [i for i in items if i["quality"] == "low"]
    rounds: dict[str, int] = {}
    for item in low:
        key = f"{item['status']}_r{item['rounds']}"
        rounds[key] = rounds.get(key, 0) + 1
    three = sum(1 for i in low if i["rounds"] >= 3)
    return {"items": len(items), "low": len(low),
            "share_needing_3_rounds": round(three / len(low), 3) if low else None,
            "by_status_and_rounds": dict(sorted(rounds.items()))}


def critical_path(items: list[dict[str, Any]], *, latency_ms: float,
                  rescore: bool) -> dict[str, Any]:
    """Where the slowest item's time went, and the medians over all items.

    Per item: ingest → terminal (record timestamps) = time inside stage handlers + time
    between them (Kafka transit and waiting for an in-flight slot); handler time = its
    LLM calls × latency + the rest (waiting for the event loop, CPU, client queueing).
    """
    def parts(item: dict[str, Any]) -> dict[str, float]:
        calls = chain_calls(item, rescore=rescore)
        llm = calls * latency_ms / 1000
        return {"latency_s": item["latency_s"], "llm_s": llm,
                "handler_overhead_s": item["handler_s"] - llm,
                "transit_s": item["latency_s"] - item["handler_s"],
                "calls": calls, "hops": item["hops"]}

    all_parts = [parts(i) for i in items if i.get("latency_s") is not None]
    if not all_parts:
        return {}
    slowest = max(all_parts, key=lambda p: p["latency_s"])
    return {
        "slowest_item": {k: round(v, 3) for k, v in slowest.items()},
        "median_transit_per_hop_s": round(harness.median(
            [p["transit_s"] / p["hops"] for p in all_parts if p["hops"]]), 3),
        "median_handler_overhead_per_call_s": round(harness.median(
            [p["handler_overhead_s"] / p["calls"] for p in all_parts]), 3),
    }


async def _round_trips(base_url: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The simulator's own round trip on this machine, through the cheapest client.

    A bare aiohttp POST (no SDK) of score prompts: 5 one at a time, then a burst of all
    ``records`` at once on warm connections — the shape of the pipeline's first wave.
    What exceeds the latency here is the instrument's (and the shared CPU's) share, not
    iterrefine's.
    """
    import aiohttp

    bodies = [json.dumps({"model": "sim-strong", "temperature": 0.0, "max_tokens": 1024,
                          "messages": build_messages("score", {
                              "instruction": r["instruction"], "input": r["input"],
                              "output": r["output"]})}).encode() for r in records]
    url = f"{base_url}/chat/completions"
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=len(bodies) + 8)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def post(body: bytes) -> float:
            started = time.monotonic()
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
            return time.monotonic() - started

        singles = [await post(body) for body in bodies[:5]]
        await asyncio.gather(*(post(body) for body in bodies))  # opens the connections
        started = time.monotonic()
        burst = await asyncio.gather(*(post(body) for body in bodies))
        burst_s = time.monotonic() - started
    return {"single_median_s": round(harness.median(singles), 4),
            "burst_size": len(bodies), "burst_all_done_s": round(burst_s, 4),
            "burst_median_s": round(harness.median(burst), 4)}


def run(bench: harness.Bench, *, items: int | None = None, processes: int = PROCESSES,
        repeats: int = REPEATS) -> dict[str, Any]:
    n = items or 200
    records = harness.reference_records(n)
    input_path = harness.write_jsonl(bench.workdir / f"e2e-{n}.jsonl", records)
    pipeline = msgspec.convert(PIPELINE, PipelineConfig)
    load_before = harness.loadavg()
    with simproc.SimProcess(log_path=bench.log("e2e-sim"), latency_ms=LATENCY_MS,
                            capacity=CAPACITY, low_share=1.0, reject_share=0.0,
                            lose_prob=LOSE_PROB) as sim:
        round_trips = asyncio.run(_round_trips(sim.base_url, records))
        attempts = []
        for attempt in range(repeats):  # fresh topics and groups each time
            sim.reset()
            config = harness.bench_config(bench.bootstrap, bench.prefix(f"e2e{attempt}"),
                                          pipeline=pipeline)
            run_ = simproc.run_pipeline_worker(bench, sim, config, name="e2e-iterrefine",
                                               input_path=input_path, timeout_s=600,
                                               processes=processes)
            simproc.check_pipeline_result(run_.result, "e2e iterrefine")
            attempts.append((run_, sim.stats()))
        # The shared 2-core machine is noisy (±0.05 in the ratio run to run): report the
        # median run, and every run's wall time.
        ours, ours_stats = sorted(attempts, key=lambda a: a[0].result["wall_s"])[len(attempts) // 2]
        cli = {workers: _cli_contender(bench, sim, input_path, workers, repeats)
               for workers in sorted({processes, 1}, reverse=True)}
        sim.reset()
        script = harness.run_worker(
            [str(harness.BENCH_DIR / "asyncio_script.py"), "--base-url", sim.base_url,
             "--input", str(input_path), "--output", str(bench.workdir / "e2e-script.jsonl"),
             "--pipeline", json.dumps(PIPELINE), "--concurrency", str(2 * CAPACITY)],
            log_path=bench.log("e2e-asyncio-script"), timeout_s=600,
        )
        script_stats = sim.stats(series=False)
        sim.reset()
        base = harness.run_worker(
            [str(harness.BENCH_DIR / "baseline.py"), "--base-url", sim.base_url,
             "--input", str(input_path), "--pipeline", json.dumps(PIPELINE)],
            log_path=bench.log("e2e-baseline"), timeout_s=1200,
        )
        base_stats = sim.stats()
        knobs = sim.knobs
    r, b = ours.result, base.result

    def bound(items: list[dict[str, Any]], total_calls: int) -> dict[str, Any]:
        """This workload's lower bound for one contender's run."""
        return lower_bound(items, total_calls, latency_ms=LATENCY_MS, capacity=CAPACITY,
                           rescore=False)

    ours_lb = bound(r["items"], ours_stats["requests_total"])
    base_lb = bound(b["items"], base_stats["requests_total"])
    same = {i["id"]: (i["status"], i["rounds"]) for i in r["items"]} == {
        i["id"]: (i["status"], i["rounds"]) for i in b["items"]}
    script_lb = bound(script.result["items"], script_stats["requests_total"])
    cli_main = cli[processes]
    complete = r["arrived"] == r["expected"] == n
    return {
        "parameters": {
            "items": n, "sim": knobs, "pipeline": PIPELINE, "max_rounds": pipeline.max_rounds,
            "runtime": dict(harness.BENCH_RUNTIME), "baseline_pools": b["pools"],
            "iterrefine_processes": processes, "iterrefine_runs": repeats,
        },
        "ratio": round(r["wall_s"] / ours_lb["lower_bound_s"], 3),
        "speedup": round(b["wall_s"] / r["wall_s"], 3),
        "lower_bound": ours_lb,
        "simulator_round_trip": round_trips,
        "iterrefine": {
            "wall_s": r["wall_s"],
            "wall_s_of_each_run": [a[0].result["wall_s"] for a in attempts],
            "ratio_of_each_run": [
                round(a[0].result["wall_s"] / bound(
                    a[0].result["items"], a[1]["requests_total"])["lower_bound_s"], 3)
                for a in attempts],
            "startup_s": r["startup_s"],
            "wall_incl_startup_s": round(r["wall_s"] + r["startup_s"], 3),
            "complete": complete,
            "duplicates": r["duplicates"],
            "llm_requests": ours_stats["requests_total"],
            "by_task": ours_stats["by_task"],
            "peak_concurrency": ours_stats["peak_concurrency"],
            "cpu_s": r["cpu_s"],
            "extra_processes_cpu_s": r["extra_processes_cpu_s"],
            "peak_rss_mb": ours.peak_rss_mb,
            "critical_path": critical_path(r["items"], latency_ms=LATENCY_MS, rescore=False),
            "loop_lag": r["loop_lag"],
            "outcomes": outcome_mix(r["items"]),
            "sim_series": simproc.sim_series(ours_stats, r["t_ready"], r["t_done"]),
        },
        "baseline": {
            "wall_s": b["wall_s"],
            "ratio_to_lower_bound": round(b["wall_s"] / base_lb["lower_bound_s"], 3),
            "lower_bound": base_lb,
            "llm_requests": base_stats["requests_total"],
            "by_task": base_stats["by_task"],
            "peak_concurrency": base_stats["peak_concurrency"],
            "phases": [{k: v for k, v in p.items() if k != "t_start"} for p in b["phases"]],
            "cpu_s": b["cpu_s"],
            "outcomes": outcome_mix(b["items"]),
            "sim_series": simproc.sim_series(base_stats, b["t_start"], b["t_done"]),
        },
        "cli_ratio": cli_main["ratio"],
        "cli_startup_s": cli[1]["startup_s"],
        "iterrefine_cli": {f"workers_{w}": c for w, c in cli.items()},
        "asyncio_script": {
            "wall_s": round(script.wall_s, 4),
            "wall_inside_s": script.result["wall_inside_s"],
            "ratio_to_lower_bound": round(script.wall_s / script_lb["lower_bound_s"], 3),
            "lower_bound": script_lb,
            "llm_requests": script_stats["requests_total"],
            "peak_rss_mb": script.peak_rss_mb,
            "outcomes": outcome_mix(script.result["items"]),
        },
        "same_outcomes": same,
        "loadavg_before": load_before,
        "loadavg_after": harness.loadavg(),
    }


def _cli_contender(bench: harness.Bench, sim: simproc.SimProcess, input_path: Path,
                   workers: int, repeats: int) -> dict[str, Any]:
    """``iterrefine run`` itself, as a user types it, ``repeats`` times: the median run.

    The run with the median wall time is reported, with every run's wall time, ratio
    and start-up beside it; ``startup_s`` is the median start-up over the runs (the
    2-core machine is noisy: ±0.2 s run to run).
    """
    runs = [_cli_run(bench, sim, input_path, workers, attempt) for attempt in range(repeats)]
    median = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
    startups = [r["startup_s"] for r in runs if r["startup_s"] is not None]
    return {**median,
            "startup_s": round(harness.median(startups), 3) if startups else None,
            "startup_s_of_median_run": median["startup_s"],
            "wall_s_of_each_run": [r["wall_s"] for r in runs],
            "ratio_of_each_run": [r["ratio"] for r in runs],
            "startup_s_of_each_run": [r["startup_s"] for r in runs]}


def _cli_run(bench: harness.Bench, sim: simproc.SimProcess, input_path: Path,
             workers: int, attempt: int) -> dict[str, Any]:
    """One ``iterrefine run``, timed from spawn to exit.

    Its own embedded broker (so its own start-up and shutdown are in the time), the same
    simulator, ``rescore_refined = false`` through a config file. ``startup_s`` = spawn →
    the simulator's first request.
    """
    sim.reset()
    out = bench.workdir / f"e2e-cli-{workers}-{attempt}.jsonl"
    config_path = bench.workdir / "e2e-cli.toml"
    config_path.write_text("[pipeline]\nrescore_refined = false\n")
    load_before = harness.loadavg()
    run = cli_run.run_cli(
        [str(input_path), "-o", str(out), "--config", str(config_path),
         "--llm-base-url", sim.base_url, "--strong-model", "sim-strong",
         "--backbone-model", "sim-backbone", "--llm-concurrency", str(2 * CAPACITY),
         "--workers", str(workers),
         "--data-dir", str(bench.workdir / f"cli-{workers}-{attempt}")],
        workdir=bench.workdir, name=f"e2e-cli-{workers}", timeout_s=600)
    stats = sim.stats(series=False)
    if run.returncode != 0:
        raise RuntimeError(f"iterrefine run --workers {workers} exited with {run.returncode}; "
                           f"see {bench.workdir}/e2e-cli-{workers}.log")
    items = []
    for line in out.read_text().splitlines():
        item = json.loads(line)["item"]
        items.append({"id": item["id"], "quality": item["quality"], "status": item["status"],
                      "rounds": item["round"]})
    bound = lower_bound(items, stats["requests_total"], latency_ms=LATENCY_MS,
                        capacity=CAPACITY, rescore=False)
    first = stats.get("first_request_uptime_s")
    startup = None if first is None else round(
        stats["started_monotonic"] + first - run.t_start, 3)
    return {
        "workers": workers,
        "wall_s": run.wall_s,
        "ratio": round(run.wall_s / bound["lower_bound_s"], 3),
        "startup_s": startup,
        "summary_wall_time_s": run.summary.get("wall_time_s"),
        # When each phase of the command ended, seconds since it started (its summary).
        "timeline": run.summary.get("timeline"),
        "complete": run.summary.get("complete"),
        "items": len(items),
        "lower_bound": bound,
        "llm_requests": stats["requests_total"],
        "peak_rss_mb": run.peak_rss_mb,
        "loadavg_before": load_before,
        "loadavg_after": harness.loadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="(same size: the workload is small)")
    parser.add_argument("--items", type=int, help="items (default 200)")
    parser.add_argument("--processes", type=int, default=PROCESSES,
                        help=f"iterrefine worker processes (default {PROCESSES})")
    parser.add_argument("--repeats", type=int, default=REPEATS,
                        help=f"iterrefine runs, the median reported (default {REPEATS})")
    args = parser.parse_args()
    harness.quiet_logging()
    with harness.bench_session(args.quick) as bench:
        result = run(bench, items=args.items, processes=args.processes, repeats=args.repeats)
    json.dump({"machine": harness.machine(), "date": harness.now_iso(), **result},
              sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
