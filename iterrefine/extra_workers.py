"""Extra stage processes for ``iterrefine run --workers N``.

One Python process sends LLM calls at a few hundred per second at most: the openai
client costs about 1.5 ms of CPU per call, so a wave of a few hundred items keeps
one event loop busy for tenths of a second (``benchmarks/README.md``). ``--workers N``
starts N - 1 child processes that each run every stage of the graph as more members of the
run's consumer groups, exactly like extra ``iterrefine worker all`` replicas in a
deployment; Kafka splits the partitions between them and the ``run`` process.

A child gets the run's resolved config (broker, topics, LLM roles — the simulator's
URL included) as a JSON file; secrets stay in the environment it inherits. It prints
``READY`` once its stages have partitions, serves until SIGTERM (drain, commit), and
writes its LLM counters to a JSON file for the run's summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import msgspec
import structlog

from iterrefine.config import Config
from iterrefine.errors import IterrefineError
from iterrefine.llm import LLMStats

log = structlog.get_logger("iterrefine.run")

READY = "READY"
_STATS = msgspec.json.Decoder(dict[str, LLMStats])


class WorkerProcessError(IterrefineError):
    reason = "worker_process_failed"


class ExtraWorkers:
    """``count`` child processes serving all stages; ``start`` returns once each is ready."""

    def __init__(self, config: Config, bootstrap: str, count: int, *,
                 ready_timeout_s: float = 120.0) -> None:
        # The run serves /metrics itself (a child binding the same port would fail).
        self._config = msgspec.structs.replace(
            config, metrics_port=None,
            kafka=msgspec.structs.replace(config.kafka, bootstrap_servers=bootstrap))
        self.count = count
        self._ready_timeout_s = ready_timeout_s
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._procs: list[asyncio.subprocess.Process] = []
        self._stopped = False

    async def start(self) -> None:
        if not self.count:
            return
        self._dir = tempfile.TemporaryDirectory(prefix="iterrefine-workers-")
        workdir = Path(self._dir.name)
        config_path = workdir / "config.json"
        config_path.write_bytes(msgspec.json.encode(self._config))
        config_path.chmod(0o600)
        for index in range(self.count):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "iterrefine.extra_workers", str(config_path),
                str(workdir / f"stats-{index}.json"), str(os.getpid()),
                stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
            )
            self._procs.append(proc)
        try:
            async with asyncio.timeout(self._ready_timeout_s):
                await asyncio.gather(*(self._ready(proc) for proc in self._procs))
        except TimeoutError as exc:
            await self.stop()
            raise WorkerProcessError(
                f"the extra worker processes did not get their partitions within "
                f"{self._ready_timeout_s:.0f} s; run with --workers 1, or check the broker"
            ) from exc
        except BaseException:
            await self.stop()
            raise
        log.info("extra_workers_ready", processes=self.count, pids=self.pids)

    @staticmethod
    async def _ready(proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            if line.decode(errors="replace").strip() == READY:
                return
        await proc.wait()
        raise WorkerProcessError(
            f"an extra worker process exited with {proc.returncode} before it was ready "
            "(its log lines are above); run with --workers 1 to keep everything in one process"
        )

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self._procs]

    async def stop(self, timeout_s: float = 60.0) -> dict[str, LLMStats]:
        """SIGTERM every child (they drain and commit), wait, and sum their LLM counters."""
        if self._stopped:
            return {}
        self._stopped = True
        for proc in self._procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._procs:
            try:
                async with asyncio.timeout(timeout_s):
                    await proc.wait()
            except TimeoutError:
                log.warning("extra_worker_killed", pid=proc.pid, after_s=timeout_s)
                proc.kill()
                await proc.wait()
        if self._dir is None:
            return {}
        totals = _read_stats(Path(self._dir.name))
        self._dir.cleanup()
        return totals


def _read_stats(workdir: Path) -> dict[str, LLMStats]:
    """The children's LLM counters, summed (a child killed at the deadline wrote none)."""
    totals: dict[str, LLMStats] = {}
    for path in sorted(workdir.glob("stats-*.json")):
        totals = add_stats(totals, _STATS.decode(path.read_bytes()))
    return totals


def add_stats(a: Mapping[str, LLMStats], b: Mapping[str, LLMStats]) -> dict[str, LLMStats]:
    """Per-role sums of two processes' LLM counters."""
    fields = LLMStats.__struct_fields__
    return {
        role: LLMStats(**{
            name: getattr(a.get(role, LLMStats()), name) + getattr(b.get(role, LLMStats()), name)
            for name in fields
        })
        for role in {**a, **b}
    }


def main(argv: list[str]) -> int:
    """The child: serve all stages with the run's config until SIGTERM."""
    from iterrefine._process import die_with_parent
    from iterrefine.logging import configure_logging
    from iterrefine.pipeline import serve_pipeline

    config_path, stats_path, parent_pid = argv
    die_with_parent(int(parent_pid))  # a SIGKILLed run takes its workers with it
    config = msgspec.json.decode(Path(config_path).read_bytes(), type=Config)
    configure_logging(json=True, level="warning", stream=sys.stderr)
    bootstrap = config.kafka.bootstrap_servers
    assert bootstrap is not None

    def ready() -> None:
        print(READY, flush=True)

    stats = asyncio.run(serve_pipeline(config, bootstrap, on_ready=ready))
    tmp = f"{stats_path}.{os.getpid()}.tmp"
    Path(tmp).write_bytes(msgspec.json.encode(stats))
    os.replace(tmp, stats_path)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main(sys.argv[1:]))
