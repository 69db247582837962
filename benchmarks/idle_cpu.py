"""Idle means idle: the pipeline's own CPU while every stage waits on a slow endpoint.

Starts ``iterrefine run`` on a few items against the simulator at ``--latency-s``
(default 30 s, no jitter) — the embedded broker, the five stages, the exporter — waits
until the items sit in their first LLM call, then measures the CPU time of the run's
process and all its children (the Tansu broker included; the simulator runs in the
same process, answering nothing meanwhile) over ``--window-s`` seconds, and prints
JSON: the share of one core used, per process. Target (issue 27): at most 2 %.

    python benchmarks/idle_cpu.py [--latency-s 30] [--window-s 40] [--repeats 3]

Each repeat is a fresh run; the median is reported with the machine's load, which
counts here (other processes slow the measured ones only a little, but note it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import loadavg, machine, now_iso, proc_cpu_s

ROOT = Path(__file__).resolve().parent.parent


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def one_run(latency_s: float, window_s: float, settle_s: float, items: int,
            idle_poll_max_ms: int | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="iterrefine-idle-") as work:
        data = Path(work, "in.jsonl")
        data.write_text("".join(json.dumps({"instruction": f"Question {n}?", "input": "",
                                            "output": f"Answer {n}."}) + "\n"
                                for n in range(items)))
        command = [sys.executable, "-m", "iterrefine.cli", "run", str(data), "-o",
                   str(Path(work, "out.jsonl")), "--llm", "sim", "--no-progress",
                   "--sim-latency-ms", str(latency_s * 1000), "--sim-jitter-ms", "0",
                   "--data-dir", str(Path(work, "state")), "--log-level", "warning"]
        if idle_poll_max_ms is not None:  # a contender: another rest length (0: no rest)
            Path(work, "c.toml").write_text(f"[runtime]\nidle_poll_max_ms = {idle_poll_max_ms}\n")
            command += ["--config", str(Path(work, "c.toml"))]
        process = subprocess.Popen(command, cwd=work, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, env={**os.environ})
        try:
            time.sleep(settle_s)
            pids = _tree(process.pid)
            names = {pid: _name(pid) for pid in pids}
            before = {pid: proc_cpu_s(pid) for pid in pids}
            load = loadavg()
            time.sleep(window_s)
            after = {pid: proc_cpu_s(pid) for pid in pids}
            alive = process.poll() is None
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    per_process: dict[str, float] = {}
    for pid in pids:
        start, end = before.get(pid), after.get(pid)
        if start is None or end is None:
            continue
        name = names[pid] if pid != process.pid else "iterrefine run"
        per_process[name] = per_process.get(name, 0.0) + (end - start) / window_s * 100
    return {"still_waiting": alive, "loadavg": load,
            "core_percent": round(sum(per_process.values()), 2),
            "per_process": {k: round(v, 2) for k, v in per_process.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-s", type=float, default=30.0)
    parser.add_argument("--window-s", type=float, default=40.0)
    parser.add_argument("--settle-s", type=float, default=12.0,
                        help="wait before measuring: start-up, ingest, first requests out")
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--idle-poll-max-ms", type=int, nargs="+", default=[-1, 0],
                        help="contenders: [runtime] idle_poll_max_ms values; -1 = the "
                        "default config (default: -1 0, i.e. default against no rest)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    if args.settle_s + args.window_s >= args.latency_s + args.settle_s - 2 and \
            args.window_s >= args.latency_s:
        raise SystemExit("--window-s must end before the first answers arrive (< latency)")
    contenders: dict[str, Any] = {}
    for _ in range(args.repeats):  # interleaved, so load changes hit every contender
        for rest in args.idle_poll_max_ms:
            key = "default" if rest < 0 else f"idle_poll_max_ms={rest}"
            contenders.setdefault(key, []).append(
                one_run(args.latency_s, args.window_s, args.settle_s, args.items,
                        None if rest < 0 else rest))
    result = {"benchmark": "idle_cpu", "date": now_iso(), "machine": machine(),
              "params": vars(args),
              "contenders": {key: {"core_percent_median": statistics.median(
                  r["core_percent"] for r in runs), "runs": runs}
                  for key, runs in contenders.items()},
              "target_core_percent": 2.0,
              # A run that ended or never waited measured nothing useful.
              "valid": all(r["still_waiting"] for runs in contenders.values() for r in runs),
              "loadavg_after": loadavg()}
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
