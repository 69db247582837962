"""Extra stage processes for ``iterrefine run --workers N``.

One Python process sends LLM calls at a few hundred per second at most: the openai
client costs about 1.5 ms of CPU per call, so a wave of a few hundred items keeps
one event loop busy for tenths of a second (``benchmarks/README.md``). ``--workers N``
starts N - 1 child processes that each run every stage of the graph as more members of the
run's consumer groups, exactly like extra ``iterrefine worker all`` replicas in a
deployment; Kafka splits the partitions between them and the ``run`` process.

A child gets the run's resolved config (broker, topics, LLM roles — the simulator's
URL included) as a JSON file; secrets stay in the environment it inherits. It prints
``READY`` once its stages have partitions, serves until SIGTERM (drain, commit, leave),
and writes its LLM counters to a JSON file for the run's summary. SIGUSR1 asks it to
drain and commit but stay in its consumer groups; it prints ``DRAINED`` when that is
done (:meth:`ExtraWorkers.drain`), and leaves on the SIGTERM that follows.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import msgspec
import structlog

from iterrefine.app.prespawn import Prespawned
from iterrefine.config import Config
from iterrefine.errors import IterrefineError
from iterrefine.llm import LLMStats

log = structlog.get_logger("iterrefine.run")

READY = "READY"
DRAINED = "DRAINED"
_STATS = msgspec.json.Decoder(dict[str, LLMStats])


class WorkerProcessError(IterrefineError):
    reason = "worker_process_failed"


class ExtraWorkers:
    """``count`` child processes serving all stages; ``start`` returns once each is ready.

    ``prespawned``: children the command line started before its own imports
    (:mod:`iterrefine.app.prespawn`); they wait for the config files written here.
    """

    def __init__(self, config: Config, bootstrap: str, count: int, *,
                 ready_timeout_s: float = 120.0, prespawned: Prespawned | None = None) -> None:
        # The run serves /metrics itself (a child binding the same port would fail).
        self._config = msgspec.structs.replace(
            config, metrics_port=None,
            kafka=msgspec.structs.replace(config.kafka, bootstrap_servers=bootstrap))
        self.count = count
        self._ready_timeout_s = ready_timeout_s
        self._pre = prespawned if prespawned is not None and len(prespawned.procs) == count \
            else None
        self._procs: list[subprocess.Popen[bytes]] = []
        self._stopped = False

    async def start(self) -> None:
        """Spawn the children and wait until each is ready."""
        await self.spawn()
        await self.wait_ready()

    async def spawn(self) -> None:
        """Start the children (unless prespawned), all at once, and hand them their config."""
        if not self.count or self._procs:
            return
        pre = self._pre if self._pre is not None else await asyncio.to_thread(
            Prespawned, self.count)
        pre.adopted = True
        self._pre = pre
        self._procs = pre.procs
        for index in range(self.count):
            path = pre.config_path(index)
            tmp = path.with_suffix(".tmp")
            tmp.touch(mode=0o600)
            tmp.write_bytes(msgspec.json.encode(self._child_config(index)))
            os.replace(tmp, path)  # whole or absent: the child waits for it

    async def wait_ready(self) -> None:
        """Return once every child has its partitions (stop them all if one fails)."""
        if not self._procs:
            return
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

    async def drain(self, timeout_s: float) -> None:
        """Ask every child to drain and commit without leaving its groups (SIGUSR1), and
        wait until each says so; a child that does not within ``timeout_s`` is left to
        :meth:`stop`."""
        live = [proc for proc in self._procs if proc.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGUSR1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*(self._line(proc, DRAINED) for proc in live))

    def _child_config(self, index: int) -> Config:
        """The run's config; with static partitions, child ``index`` takes share ``index + 1``."""
        static = self._config.runtime.static_partitions
        if static is None:
            return self._config
        share = msgspec.structs.replace(static, index=index + 1)
        return msgspec.structs.replace(
            self._config, runtime=msgspec.structs.replace(self._config.runtime,
                                                          static_partitions=share))

    def exited(self) -> bool:
        """Whether a child has already exited (it would leave its partitions unserved)."""
        return any(proc.poll() is not None for proc in self._procs)

    @staticmethod
    async def _line(proc: subprocess.Popen[bytes], wanted: str) -> bool:
        """Read the child's stdout up to the line ``wanted``: whether it came."""
        assert proc.stdout is not None
        stdout = proc.stdout
        while line := await asyncio.to_thread(stdout.readline):
            if line.decode(errors="replace").strip() == wanted:
                return True
        return False

    @classmethod
    async def _ready(cls, proc: subprocess.Popen[bytes]) -> None:
        if await cls._line(proc, READY):
            return
        code = await asyncio.to_thread(proc.wait)
        raise WorkerProcessError(
            f"an extra worker process exited with {code} before it was ready "
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
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._procs:
            try:
                await asyncio.to_thread(proc.wait, timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("extra_worker_killed", pid=proc.pid, after_s=timeout_s)
                proc.kill()
                await asyncio.to_thread(proc.wait)
            if proc.stdout is not None:
                proc.stdout.close()
        if self._pre is None:
            return {}
        totals = _read_stats(self._pre.workdir)
        shutil.rmtree(self._pre.workdir, ignore_errors=True)
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
    from iterrefine.observe.logging import configure_logging
    from iterrefine.processes import die_with_parent

    config_path, stats_path, parent_pid = argv
    die_with_parent(int(parent_pid))  # a SIGKILLed run takes its workers with it
    # Started before the run knew its broker (iterrefine.app.prespawn): the imports above are
    # done; now wait for the config, unless the run has gone meanwhile.
    while not Path(config_path).exists():
        if os.getppid() != int(parent_pid):
            return 0
        time.sleep(0.005)
    config = msgspec.json.decode(Path(config_path).read_bytes(), type=Config)
    configure_logging(json=True, level="warning", stream=sys.stderr)
    bootstrap = config.kafka.bootstrap_servers
    assert bootstrap is not None

    # The run created every topic before it started this process.
    stats = asyncio.run(_serve(config, bootstrap))
    tmp = f"{stats_path}.{os.getpid()}.tmp"
    Path(tmp).write_bytes(msgspec.json.encode(stats))
    os.replace(tmp, stats_path)
    return 0


async def _serve(config: Config, bootstrap: str) -> dict[str, LLMStats]:
    """Serve until SIGTERM; SIGUSR1 first drains and commits without leaving the groups."""
    from iterrefine.app.pipeline import serve_pipeline

    stop, leave = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, stop.set)

    def stop_and_leave() -> None:
        stop.set()
        leave.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_and_leave)

    def say(line: str) -> None:
        print(line, flush=True)

    return await serve_pipeline(
        config, bootstrap, on_ready=lambda: say(READY), topics_ready=True, stop=stop,
        leave=leave, on_drained=lambda: say(DRAINED))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        code = main(sys.argv[1:])
        # Skip the interpreter's teardown (~0.75 s on a busy machine): the run waits
        # for this exit. Exit handlers still run.
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
