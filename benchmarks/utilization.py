"""How busy iterrefine keeps the LLM: simulator concurrency / capacity in steady state.

1,000 items (``--quick``: 300) of the reference mix (every item low quality, each review
lost with probability 0.632, so items take 1–3 rounds) go through the five stages in
one worker process; the simulator runs in a process of its own with 500 ms latency and
capacity 128. Its ``/stats`` time series (the mean number of requests being served in
every 100 ms) is the measurement.

Steady state: from the first sample in which the simulator is full (concurrency =
capacity) to the last sample in which a request had to queue. Inside that window there
was always more demand than capacity somewhere in the run, so an ideal client keeps
every slot busy; outside it the run is filling up or draining its last items (fewer
than ``capacity`` calls left), which no scheduler can fill. ``llm_utilization`` = mean
of the interval means in the window / capacity. For comparison the result also has the
middle 80 % of the run and the whole run (``busy_s / (capacity × wall)``).

Run ``python benchmarks/utilization.py [--quick] [--items N]``; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import harness
import msgspec
import simproc

from iterrefine.config import PipelineConfig

LATENCY_MS = 500.0
CAPACITY = 128
LOSE_PROB = 0.632
PIPELINE = {"rescore_refined": False}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def steady_state(series: dict[str, list[float]], capacity: int) -> dict[str, Any]:
    """The steady-state window of a simulator series and the utilisation inside it."""
    t, mean = series["t_s"], series["mean"]
    full = [i for i, c in enumerate(series["concurrency"]) if c >= capacity]
    queued = [i for i, q in enumerate(series["queued"]) if q > 0]
    if not full or not queued or queued[-1] <= full[0]:
        return {"utilization": None, "note": "the simulator never had more demand than capacity"}
    first, last = full[0], queued[-1]
    window = mean[first + 1:last + 1]  # interval means ending after the first full sample
    value = _mean(window)
    return {
        "utilization": round(value / capacity, 4) if value is not None else None,
        "window_s": [t[first], t[last]],
        "samples": len(window),
        "min_interval_utilization": round(min(window) / capacity, 3) if window else None,
    }


def middle(series: dict[str, list[float]], capacity: int, share: float = 0.8) -> float | None:
    t, mean = series["t_s"], series["mean"]
    if not t:
        return None
    span = t[-1] - t[0]
    lo, hi = t[0] + span * (1 - share) / 2, t[-1] - span * (1 - share) / 2
    value = _mean([m for ti, m in zip(t, mean, strict=True) if lo <= ti <= hi])
    return round(value / capacity, 4) if value is not None else None


def run(bench: harness.Bench, *, items: int | None = None, profile: bool = False,
        ) -> dict[str, Any]:
    n = items or (300 if bench.quick else 1000)
    input_path = harness.write_jsonl(bench.workdir / f"util-{n}.jsonl",
                                     harness.reference_records(n))
    load_before = harness.loadavg()
    with simproc.SimProcess(log_path=bench.log("util-sim"), latency_ms=LATENCY_MS,
                            capacity=CAPACITY, low_share=1.0, reject_share=0.0,
                            lose_prob=LOSE_PROB) as sim:
        sim.reset()
        config = harness.bench_config(bench.bootstrap, bench.prefix("util"),
                                      pipeline=msgspec.convert(PIPELINE, PipelineConfig))
        worker = simproc.run_pipeline_worker(bench, sim, config, name="util-iterrefine",
                                             input_path=input_path, timeout_s=900)
        stats = sim.stats()
        knobs = sim.knobs
    r = worker.result
    simproc.check_pipeline_result(r, "utilization")
    series = simproc.sim_series(stats, r["t_ready"], r["t_done"])
    steady = steady_state(series, CAPACITY)
    whole = stats["busy_s"] / (CAPACITY * r["wall_s"]) if r["wall_s"] else None
    return {
        "parameters": {"items": n, "sim": knobs, "pipeline": PIPELINE,
                       "runtime": dict(harness.BENCH_RUNTIME), "sample_interval_ms": 100},
        "llm_utilization": steady["utilization"],
        "steady_state": steady,
        "middle_80pct_utilization": middle(series, CAPACITY),
        "whole_run_utilization": harness.rounded(whole, 4),
        "wall_s": r["wall_s"],
        "complete": r["arrived"] == r["expected"] == n,
        "llm_requests": stats["requests_total"],
        "peak_queued": stats["peak_queued"],
        "cpu_s": r["cpu_s"],
        "loop_lag": {k: v for k, v in r["loop_lag"].items() if k != "stalls_over_100ms_t_ms"},
        "peak_rss_mb": worker.peak_rss_mb,
        "sim_series": series,
        "loadavg_before": load_before,
        "loadavg_after": harness.loadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 items instead of 1,000")
    parser.add_argument("--items", type=int)
    args = parser.parse_args()
    harness.quiet_logging()
    with harness.bench_session(args.quick) as bench:
        result = run(bench, items=args.items)
    json.dump({"machine": harness.machine(), "date": harness.now_iso(), **result},
              sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
