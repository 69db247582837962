"""Resume: what a SIGKILLed ``iterrefine run`` plus the identical rerun costs vs a clean run.

Starts ``iterrefine sim-llm`` in its own process (it counts every request), then

1. clean: ``iterrefine run`` on a fresh data dir; the simulator's request count;
2. killed: the same command on another fresh data dir, SIGKILLed (``--signal``) once
   the simulator has answered about half the clean run's requests; checks that the
   run's child processes (embedded broker, ``--workers`` children) died with it;
3. rerun: the identical command again (same data dir, hence the same response cache).

Prints JSON: requests per phase, (killed + rerun) / clean, whether the curated ids equal
the clean run's, and the orphans left by the kill.

    python benchmarks/resume.py [--input examples/dolly_sample.jsonl] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from iterrefine.processes import descendants, pid_alive

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def sim_requests(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats?series=0", timeout=5) as r:
        total: int = json.load(r)["requests_total"]
        return total


def reset_sim(port: int) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/stats/reset", method="POST")
    urllib.request.urlopen(request, timeout=5).close()




def curated_ids(path: Path) -> list[str]:
    return sorted(json.loads(line)["id"] for line in path.read_text().splitlines() if line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=ROOT / "examples" / "dolly_sample.jsonl")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--kill-at", type=float, default=0.5,
                        help="share of the clean run's requests before the signal")
    parser.add_argument("--signal", choices=["KILL", "TERM", "INT"], default="KILL",
                        help="KILL loses the calls in flight; TERM/INT let them finish")
    args = parser.parse_args()
    port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "iterrefine.cli", "sim-llm", "--port", str(port),
         "--latency-ms", "100", "--jitter-ms", "50", "--request-log-size", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = Path(tempfile.mkdtemp(prefix="iterrefine-resume-"))
    try:
        for _ in range(100):
            try:
                sim_requests(port)
                break
            except OSError:
                time.sleep(0.1)

        def command(data_dir: Path, out: Path) -> list[str]:
            return [sys.executable, "-m", "iterrefine.cli", "run", str(args.input), "-o", str(out),
                    "--llm-base-url", f"http://127.0.0.1:{port}/v1",
                    "--strong-model", "sim-strong", "--backbone-model", "sim-backbone",
                    "--data-dir", str(data_dir), "--workers", str(args.workers),
                    "--no-progress", "--log-level", "error"]

        started = time.monotonic()
        clean = subprocess.run(command(work / "clean", work / "clean.jsonl"), check=False,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        clean_s = time.monotonic() - started
        clean_requests = sim_requests(port)

        reset_sim(port)
        killed = subprocess.Popen(command(work / "resumed", work / "resumed.jsonl"),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = int(clean_requests * args.kill_at)
        while sim_requests(port) < target and killed.poll() is None:
            time.sleep(0.02)
        family = descendants(killed.pid)
        killed.send_signal(getattr(signal, f"SIG{args.signal}"))
        killed.wait()
        killed_requests = sim_requests(port)
        time.sleep(2.0)  # parent-death signals, then drains of what survived
        orphans = [pid for pid in family if pid_alive(pid)]
        after_kill = sim_requests(port)

        reset_sim(port)
        started = time.monotonic()
        rerun = subprocess.run(command(work / "resumed", work / "resumed.jsonl"), check=False,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rerun_s = time.monotonic() - started
        rerun_requests = sim_requests(port)
        same = curated_ids(work / "clean.jsonl") == curated_ids(work / "resumed.jsonl")
        print(json.dumps({
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
            "input": str(args.input), "workers": args.workers, "kill_at": args.kill_at,
            "signal": args.signal,
            "clean": {"exit": clean.returncode, "requests": clean_requests,
                      "seconds": round(clean_s, 2)},
            "killed": {"exit": killed.returncode, "requests": killed_requests,
                       "children": len(family),
                       "orphans_2s_after_kill": len(orphans),
                       "requests_after_kill": after_kill - killed_requests},
            "rerun": {"exit": rerun.returncode, "requests": rerun_requests,
                      "seconds": round(rerun_s, 2)},
            "ratio": round((after_kill + rerun_requests) / clean_requests, 3),
            "curated_ids_identical": same,
        }, indent=2))
        for pid in orphans:  # leave the machine clean
            os.kill(pid, signal.SIGKILL)
    finally:
        sim.terminate()
        sim.wait()


if __name__ == "__main__":
    main()
