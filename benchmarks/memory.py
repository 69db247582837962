"""``iterrefine run`` on a large input: does its memory stay flat as the input grows?

The command runs as a user runs it (its own embedded broker, ``--workers 2``) on small
Alpaca records at two sizes (20,000 and 200,000; ``--quick`` 2,000 and 20,000),
against a simulator process with 1 ms latency and no capacity limit that judges every
item high quality (one LLM call per item: score → route → curated), so the run is
bound by the pipeline, not by waiting. Reported per size: the wall time, the broker's
storage (``auto`` picks disk for inputs of 1 MB and more: both full sizes), and the
peak RSS (``VmHWM``, sampled every 100 ms from /proc) of the run process, of the
broker (``tansu``, plus ``weed`` on disk storage; ``broker`` is their sum), and of the
extra worker process. ``growth`` = large ÷ small (target ≤ 1.5).

Run ``python benchmarks/memory.py [--quick] [--sizes 20000,200000]
[--broker-storage memory|disk]``; prints JSON.
"""

from __future__ import annotations

import argparse
from typing import Any

import cli_run
import harness
import simproc

SIZES = (20_000, 200_000)
QUICK_SIZES = (2_000, 20_000)


def _one(bench: harness.Bench, sim: simproc.SimProcess, n: int, storage: str | None,
         ) -> dict[str, Any]:
    input_path = harness.write_jsonl(bench.workdir / f"memory-{n}.jsonl", harness.small_records(n))
    size_mb = input_path.stat().st_size / 2**20
    sim.reset()
    load_before = harness.loadavg()
    run = cli_run.run_cli(
        [str(input_path), "-o", str(bench.workdir / f"memory-{n}.out.jsonl"),
         "--llm-base-url", sim.base_url, "--strong-model", "sim-strong",
         "--backbone-model", "sim-backbone", "--llm-concurrency", "256", "--workers", "2",
         "--data-dir", str(bench.workdir / f"memory-{n}"),
         *(["--broker-storage", storage] if storage else [])],
        workdir=bench.workdir, name=f"memory-{n}", timeout_s=3600)
    input_path.unlink()
    return {"items": n, "returncode": run.returncode, "wall_s": run.wall_s,
            "input_mb": round(size_mb, 2),
            "broker_storage": "disk" if "weed" in run.peak_rss_mb else "memory",
            "complete": run.summary.get("complete"), "curated": run.summary.get("curated"),
            "peak_rss_mb": run.peak_rss_mb, "loadavg_before": load_before,
            "loadavg_after": harness.loadavg()}


def run(bench: harness.Bench, *, sizes: tuple[int, ...] | None = None,
        broker_storage: str | None = None) -> dict[str, Any]:
    small, large = sizes or (QUICK_SIZES if bench.quick else SIZES)
    with simproc.SimProcess(log_path=bench.log("memory-sim"), latency_ms=1.0, capacity=0,
                            low_share=0.0, reject_share=0.0, lose_prob=0.5) as sim:
        runs = {str(n): _one(bench, sim, n, broker_storage) for n in (small, large)}
    a, b = runs[str(small)]["peak_rss_mb"], runs[str(large)]["peak_rss_mb"]
    growth = {kind: round(b[kind] / a[kind], 3) for kind in a if kind in b and a[kind]}
    return {"sizes": [small, large], "by_size": runs, "growth": growth,
            "rss_mb_run_small": a.get("run"), "rss_mb_run_large": b.get("run")}


def _add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker-storage", choices=["auto", "memory", "disk"],
                        help="passed to `iterrefine run` (default: its own, auto)")


def main() -> None:
    harness.sized_main(run, doc=__doc__, quick_help=f"sizes {QUICK_SIZES}",
                       sizes_help="two comma-separated sizes", add_args=_add_args)


if __name__ == "__main__":
    main()
