"""The simulator side of the LLM scenarios: the ``sim-llm`` process, its time series,
and the pipeline worker that calls it.

``utilization.py``, ``e2e.py``, ``overhead.py`` and ``backlog.py`` start one
:class:`SimProcess` each (the simulator never shares an event loop with what is
measured) and spawn ``pipeline_worker.py`` through :func:`run_pipeline_worker`.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import (
    BENCH_DIR,
    ROOT,
    Bench,
    WorkerRun,
    encode_config,
    free_port,
    proc_cpu_s,
    run_worker,
)

from iterrefine.config import Config


class SimProcess:
    """``iterrefine sim-llm`` in a process of its own, so it never shares our event loop."""

    def __init__(self, *, log_path: Path, latency_ms: float, capacity: int,
                 low_share: float, reject_share: float, lose_prob: float,
                 tie_share: float | None = None, extra: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.knobs: dict[str, Any] = {
            "latency_ms": latency_ms, "capacity": capacity, "low_share": low_share,
            "reject_share": reject_share, "lose_prob": lose_prob,
        }
        argv = [sys.executable, "-m", "iterrefine.cli", "sim-llm", "--port", str(self.port),
                "--latency-ms", str(latency_ms), "--capacity", str(capacity),
                "--low-share", str(low_share), "--reject-share", str(reject_share),
                "--lose-prob", str(lose_prob), "--request-log-size", "1"]
        if tie_share is not None:
            self.knobs["tie_share"] = tie_share
            argv += ["--tie-share", str(tie_share)]
        if extra:  # other sim-llm flags (faults, jitter), recorded as given
            self.knobs["extra"] = list(extra)
            argv += list(extra)
        self._log = log_path.open("ab")
        self._proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)
        self._wait_healthy()

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def _wait_healthy(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the simulator exited with {self._proc.returncode}")
            with (contextlib.suppress(OSError),
                  urllib.request.urlopen(f"{self.url}/health", timeout=1) as resp):
                if resp.status == 200:
                    return
            time.sleep(0.05)
        self.close()
        raise RuntimeError("the simulator did not answer /health in time")

    def stats(self, *, series: bool = True) -> dict[str, Any]:
        """``GET /stats`` plus ``started_monotonic``: the sim's series origin on our clock.

        CLOCK_MONOTONIC is system-wide on Linux, so worker timestamps
        (``time.monotonic()``) and series times line up through this origin.
        """
        before = time.monotonic()
        with urllib.request.urlopen(f"{self.url}/stats?series={int(series)}", timeout=10) as resp:
            stats: dict[str, Any] = json.loads(resp.read())
        after = time.monotonic()
        stats["started_monotonic"] = (before + after) / 2 - stats["uptime_s"]
        return stats

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.url}/stats/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def cpu_s(self) -> float | None:
        return proc_cpu_s(self._proc.pid)

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def sim_series(
    stats: dict[str, Any], t0: float, t1: float | None = None
) -> dict[str, list[float]]:
    """The simulator's time series from monotonic ``t0`` (to ``t1``), t relative to ``t0``.

    ``mean`` is the mean concurrency over each 100 ms interval, ``concurrency`` and
    ``queued`` the values at its end.
    """
    series = stats.get("series") or {}
    origin = stats["started_monotonic"]
    out: dict[str, list[float]] = {"t_s": [], "mean": [], "concurrency": [], "queued": []}
    for t_s, conc, queued, mean in zip(series.get("t_s", []), series.get("concurrency", []),
                                       series.get("queued", []),
                                       series.get("mean_concurrency", []), strict=True):
        t = origin + t_s
        if t < t0 - 0.2 or (t1 is not None and t > t1 + 0.2):
            continue
        out["t_s"].append(round(t - t0, 2))
        out["mean"].append(mean)
        out["concurrency"].append(conc)
        out["queued"].append(queued)
    return out


def _pipeline_argv(sim: SimProcess, config: Config, stages: str) -> list[str]:
    return [str(BENCH_DIR / "pipeline_worker.py"), "--config", encode_config(config),
            "--sim-base-url", sim.base_url,
            "--sim-latency-ms", str(sim.knobs["latency_ms"]),
            "--sim-capacity", str(sim.knobs["capacity"]), "--stages", stages]


def run_pipeline_worker(
    bench: Bench, sim: SimProcess, config: Config, *, name: str, input_path: Path | None = None,
    drain: int | None = None, stages: str = "score,route,refine,review,align",
    timeout_s: float = 1800, wrap: Sequence[str] = (), processes: int = 1,
) -> WorkerRun:
    """Spawn ``pipeline_worker.py`` (iterrefine's stages in one process) against ``sim``.

    ``processes`` > 1: the worker first starts that many minus one extra stage
    processes in the same groups (as ``iterrefine run --workers``), then joins last.
    ``wrap`` prefixes the command (a profiler, e.g. ``py-spy record ... --``).
    """
    argv = [*_pipeline_argv(sim, config, stages), "--processes", str(processes)]
    if input_path is not None:
        argv += ["--input", str(input_path)]
    if drain is not None:
        argv += ["--drain", str(drain)]
    return run_worker(argv, log_path=bench.log(name), timeout_s=timeout_s, wrap=wrap)


def check_pipeline_result(result: dict[str, Any], what: str) -> None:
    """Refuse to report numbers of a run that did not do the work.

    Dead letters are terminal too, so a broken stage could look like a fast, complete
    run; a stalled run would look like a slow one.
    """
    dead = sum(result.get("dead_lettered", {}).values())
    if dead or result.get("dlq_reasons"):
        reasons = result.get("dlq_reasons") or {}
        raise RuntimeError(f"{what}: {dead} messages were dead-lettered, so the run measured "
                           f"no real work; reasons: {reasons}")
    done = (sum(result.get("handled", {}).values()) if result.get("mode") == "drain"
            else result.get("arrived"))
    if done != result.get("expected"):
        raise RuntimeError(f"{what}: only {done} of {result.get('expected')} items were done "
                           "(the run stalled or a stage crashed; see the worker's log)")
