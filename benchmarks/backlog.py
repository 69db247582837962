"""Peak RSS of one stage process draining a backlog: flat in the backlog size?

A backlog of small Alpaca records waits in ``items.raw`` (8 partitions); ONE worker
process runs the ``score`` stage (the real stage: prompt, LLM client, parser, runtime)
against the simulator in a separate process with no latency and no capacity limit, so
the stage drains as fast as it can, and runs until it handled every record. Its peak
RSS is its ``VmHWM`` (the kernel's high-water mark of the process, read by the worker
just before it exits), cross-checked by the driver sampling its VmRSS every 100 ms.

The in-flight window (``max_in_flight``) and aiokafka's prefetch bound what one
process holds, so the peak must not grow with the backlog: the result has the peak at
each size and their ratio.

Run ``python benchmarks/backlog.py [--quick] [--sizes 50000,200000]``; prints JSON.
"""

from __future__ import annotations

import asyncio
from typing import Any

import harness
import simproc


def _downsample(series: list[tuple[float, float]], points: int = 60) -> list[list[float]]:
    step = max(1, len(series) // points)
    return [list(p) for p in series[::step]]


def run(bench: harness.Bench, *, sizes: tuple[int, ...] | None = None) -> dict[str, Any]:
    sizes = sizes or ((2_000, 8_000) if bench.quick else (50_000, 200_000))
    load_before = harness.loadavg()
    results: dict[str, Any] = {}
    with simproc.SimProcess(log_path=bench.log("backlog-sim"), latency_ms=0, capacity=0,
                            low_share=0.5, reject_share=0.02, lose_prob=0.5) as sim:
        knobs = sim.knobs
        for n in sizes:
            config = harness.bench_config(bench.bootstrap, bench.prefix(f"backlog-{n}"))
            asyncio.run(harness.produce(config, "items.raw", harness.small_records(n)))
            worker = simproc.run_pipeline_worker(bench, sim, config, name="backlog-worker",
                                                 drain=n, stages="score", timeout_s=1800)
            r = worker.result
            simproc.check_pipeline_result(r, f"backlog {n}")
            results[str(n)] = {
                "peak_rss_mb": worker.peak_rss_mb,
                "sampled_peak_rss_mb": worker.sampled_peak_rss_mb,
                "rss_at_end_mb": r["rss_mb"],
                "drain_s": r["wall_s"],
                "items_per_s": round(n / r["wall_s"], 1),
                "cpu_us_per_item": round(r["cpu_s"] / n * 1e6, 1),
                "handled": r["handled"],
                "dead_lettered": r["dead_lettered"],
                "rss_series_s_mb": _downsample(worker.rss_series),
            }
    small, large = (results[str(n)] for n in (min(sizes), max(sizes)))
    return {
        "parameters": {
            "sizes": list(sizes), "stage": "score", "item_bytes": len(harness.small_records(1)[0]),
            "partitions": 8, "runtime": dict(harness.BENCH_RUNTIME),
            "max_in_flight": 256, "sim": knobs,
        },
        "peak_rss_mb": large["peak_rss_mb"],
        "peak_rss_growth": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
        "by_backlog": results,
        "loadavg_before": load_before,
        "loadavg_after": harness.loadavg(),
    }


def main() -> None:
    harness.sized_main(run, doc=__doc__, quick_help="2,000 and 8,000 items",
                       sizes_help="comma-separated backlog sizes")


if __name__ == "__main__":
    main()
