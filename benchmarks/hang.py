"""Requests that hang: wall time of ``iterrefine run`` with 5% of requests lost, hedged or not.

Each contender is ``iterrefine run`` on the same N items against its own ``iterrefine
sim-llm`` process (``--no-cache``, roles from a TOML config, ``timeout_s`` 60 as by
default):

* ``clean``: no faults (hedging on, as by default);
* ``hang_unhedged``: ``--fault-hang`` of the requests never answer (the simulator sleeps
  ``--hang-s``), ``hedge = false``: each lost request waits out ``timeout_s``, as before
  issue 26 (``--skip-unhedged`` leaves it out: it takes minutes);
* ``hang_hedged``: the same faults, hedging on (:mod:`iterrefine.llm._hedge`).

Floor and ceiling: every run accounts for all N items (curated + rejected + dlq), the
hang contenders' simulators did lose requests, and ``hang_hedged`` takes at most
``--ceiling`` times the clean wall time (issue 26: 3x). Prints JSON.

    python benchmarks/hang.py --items 300
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import ROOT, loadavg, machine
from simproc import SimProcess


def items(n: int) -> list[dict[str, Any]]:
    base = [json.loads(line) for line in
            (ROOT / "examples" / "dolly_sample.jsonl").read_text().splitlines()]
    rows = []
    for i in range(n):
        row = dict(base[i % len(base)])
        row["instruction"] = f"{row['instruction']} (variant {i // len(base)})"
        row["id"] = f"hang-{i}"
        rows.append(row)
    return rows


def config_toml(base_url: str, *, hedge: bool) -> str:
    roles = []
    for role in ("strong", "backbone"):
        roles.append(f'[llm.{role}]\nbase_url = "{base_url}"\nmodel = "sim-{role}"\n'
                     f'structured_output = "json_schema"\nhedge = {str(hedge).lower()}\n')
    return "\n".join(roles)


def one_run(name: str, source: Path, work: Path, *, hang: float, hedge: bool,
            latency_ms: float, hang_s: float) -> dict[str, Any]:
    folder = work / name
    folder.mkdir()
    faults = ["--jitter-ms", str(latency_ms / 2), "--fault-hang", str(hang),
              "--hang-s", str(hang_s)]
    with SimProcess(log_path=folder / "sim.log", latency_ms=latency_ms, capacity=0,
                    low_share=0.5, reject_share=0.02, lose_prob=0.5, extra=faults) as sim:
        config = folder / "c.toml"
        config.write_text(config_toml(sim.base_url, hedge=hedge))
        summary_path = folder / "summary.json"
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "iterrefine.cli", "run", str(source),
             "-o", str(folder / "out.jsonl"), "--config", str(config), "--no-cache",
             "--data-dir", str(folder / "d"), "--summary", str(summary_path),
             "--no-progress", "--log-level", "error"],
            cwd=ROOT, capture_output=True, text=True, check=False)
        wall = time.monotonic() - started
        stats = sim.stats(series=False)
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return {
        "exit_code": done.returncode,
        "wall_s": round(wall, 2),
        "summary_wall_time_s": summary.get("wall_time_s"),
        "items_out": sum(summary.get(k, 0) for k in ("curated", "rejected", "dlq")),
        "dlq": summary.get("dlq"),
        "sim_requests": stats.get("requests_total"),
        "sim_hangs": (stats.get("faults") or {}).get("hang", 0),
        "hedged": sum(r.get("hedged", 0) for r in summary.get("llm", {}).values()),
        "stderr_tail": done.stderr[-500:] if done.returncode not in (0, 1) else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--fault-hang", type=float, default=0.05)
    parser.add_argument("--hang-s", type=float, default=600.0)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--ceiling", type=float, default=3.0)
    parser.add_argument("--skip-unhedged", action="store_true")
    args = parser.parse_args()
    load_before = loadavg()
    with tempfile.TemporaryDirectory(prefix="iterrefine-hang-") as tmp:
        work = Path(tmp)
        source = work / "in.jsonl"
        source.write_text("".join(json.dumps(row) + "\n" for row in items(args.items)))
        common = {"latency_ms": args.latency_ms, "hang_s": args.hang_s}
        runs = {"clean": one_run("clean", source, work, hang=0.0, hedge=True, **common)}
        if not args.skip_unhedged:
            runs["hang_unhedged"] = one_run("hang_unhedged", source, work,
                                            hang=args.fault_hang, hedge=False, **common)
        runs["hang_hedged"] = one_run("hang_hedged", source, work, hang=args.fault_hang,
                                      hedge=True, **common)
    problems = []
    for name, run in runs.items():
        if run["items_out"] != args.items:
            problems.append(f"{name}: {run['items_out']} of {args.items} items accounted for")
        if name != "clean" and not run["sim_hangs"]:
            problems.append(f"{name}: the simulator lost no request")
    ratio = runs["hang_hedged"]["wall_s"] / runs["clean"]["wall_s"]
    if ratio > args.ceiling:
        problems.append(f"hang_hedged took {ratio:.2f}x the clean wall time")
    print(json.dumps({
        "benchmark": "hang", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(), "loadavg_before": load_before, "loadavg_after": loadavg(),
        "parameters": vars(args), "runs": runs,
        "hedged_over_clean": round(ratio, 2),
        "unhedged_over_clean": (round(runs["hang_unhedged"]["wall_s"] / runs["clean"]["wall_s"],
                                      2) if "hang_unhedged" in runs else None),
        "problems": problems, "ok": not problems,
    }, indent=2))


if __name__ == "__main__":
    main()
