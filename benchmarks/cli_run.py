"""``iterrefine run`` as a user runs it: the command in a subprocess, timed from outside.

Wall time is the driver's stopwatch from spawn to exit. Peak memory is sampled every
100 ms from /proc as the high-water mark (``VmHWM``) of the run process and of each of
its descendants: the embedded broker (``tansu``, plus ``weed`` when it runs on durable
storage) and ``--workers`` children. The command's own summary (``--summary``) is
returned too.
"""

from __future__ import annotations

import compileall
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import ROOT, proc_status_mb


@dataclass
class CliRun:
    returncode: int
    #: time.monotonic() at spawn (the system-wide clock, comparable with the simulator's).
    t_start: float
    wall_s: float
    summary: dict[str, Any]
    #: Peak VmHWM (MB) per process kind: "run", "broker", "worker"; with durable storage
    #: also "tansu" and "weed", whose sum is "broker".
    peak_rss_mb: dict[str, float] = field(default_factory=dict)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


#: Broker-side processes: Tansu, and SeaweedFS (``weed``) behind it on durable storage.
BROKER_PARTS = ("tansu", "weed")


def _kind(pid: int, root: int) -> str:
    """"run", "worker", or a broker part ("tansu", "weed")."""
    if pid == root:
        return "run"
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "other"
    return next((part for part in BROKER_PARTS if comm.startswith(part)), "worker")


def _add_sample(peaks: dict[str, float], sample: dict[str, float]) -> None:
    """Fold one sample's high-water marks into ``peaks``.

    "broker" is the sum of the broker parts' high-water marks in the same sample: an
    upper bound of their combined resident memory (each part peaked at some time).
    """
    for kind, hwm in sample.items():
        peaks[kind] = max(peaks.get(kind, 0.0), hwm)
    parts = [sample[part] for part in BROKER_PARTS if part in sample]
    if parts:
        peaks["broker"] = max(peaks.get("broker", 0.0), round(sum(parts), 1))


def compile_package() -> None:
    """Byte-compile iterrefine, as ``pip install .`` does when it installs it.

    The command runs from this checkout. Where PYTHONDONTWRITEBYTECODE is set (this
    sandbox sets it) nothing writes ``__pycache__``, so every start would compile each
    module from source again (0.2 s here), a cost no installed copy pays.
    """
    compileall.compile_dir(ROOT / "iterrefine", quiet=1)


def run_cli(args: list[str], *, workdir: Path, name: str, timeout_s: float = 1800,
            ) -> CliRun:
    """Run ``iterrefine run ARGS... --summary FILE --no-progress``; time it and its memory."""
    compile_package()
    summary_path = workdir / f"{name}.summary.json"
    summary_path.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "iterrefine.cli", "run", *args, "--no-progress",
            "--log-level", "warning", "--summary", str(summary_path)]
    peaks: dict[str, float] = {}
    finished = threading.Event()
    with (workdir / f"{name}.log").open("ab") as log:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=log, stderr=log, cwd=ROOT)

        def sample() -> None:
            while not finished.wait(0.1):
                pending = [proc.pid]
                seen: dict[str, float] = {}
                while pending:
                    pid = pending.pop()
                    pending += _children(pid)
                    hwm = proc_status_mb(pid, "VmHWM")
                    if hwm is not None:
                        kind = _kind(pid, proc.pid)
                        seen[kind] = max(seen.get(kind, 0.0), hwm)
                _add_sample(peaks, seen)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            returncode = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            returncode = proc.wait()
        wall = time.monotonic() - started
        finished.set()
        sampler.join()
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return CliRun(returncode=returncode, t_start=started, wall_s=round(wall, 4),
                  summary=summary, peak_rss_mb=peaks)
