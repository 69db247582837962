"""Three `iterrefine worker all` processes, one SIGKILLed mid-run, on each broker.

For each broker (the embedded Tansu, noida-db from PyPI): start three workers on one
simulator, ingest N items, SIGKILL one worker while its LLM calls are in flight, and
measure the time from the kill until every item is in a terminal topic (capped), the
duplicate terminal records (at-least-once redelivery: work the victim finished but had
not committed), the survivors' exit codes on SIGTERM and `iterrefine export`'s exit code.

    python -m benchmarks.kill_worker [--items 120] [--cap-s 90]

Prints JSON. Floors and ceilings: a broker whose workers finish nothing after the kill
reports ``recovered: false`` (never a time), so it cannot pass for fast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from iterrefine.broker.embedded import EmbeddedBroker
from iterrefine.config import Config, KafkaConfig, RuntimeConfig
from iterrefine.io.completeness import pipeline_completeness
from iterrefine.sim import SimConfig, SimServer
from tests.brokers import NoidaBroker
from tests.pipeline_support import sample_records, write_jsonl
from tests.worker_procs import WorkerProc, stop_all, write_worker_config

ROOT = Path(__file__).resolve().parents[1]


def _config(name: str) -> Config:
    return Config(kafka=KafkaConfig(topic_prefix=f"kill{name}{os.getpid()}.", partitions=8),
                  runtime=RuntimeConfig(session_timeout_ms=6000, heartbeat_interval_ms=500,
                                        commit_interval_ms=200, drain_timeout_s=10.0,
                                        retry_base_s=0.02, retry_max_s=0.5))


async def _until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (a counter another task updates: there is no event to await)."""
    for _ in range(6000):  # 120 s
        if condition():
            return
        await asyncio.sleep(0.02)


async def _finished(config: Config, bootstrap: str) -> tuple[int, int, int]:
    done = await pipeline_completeness(config.kafka, bootstrap)
    return done.ingested, done.finished, done.duplicates


async def one_broker(name: str, bootstrap: str, items: int, cap_s: float) -> dict[str, Any]:
    config = _config(name)
    work = Path(tempfile.mkdtemp(prefix=f"kill-{name}-"))
    settings = write_worker_config(work / "worker.toml", config, bootstrap=bootstrap)
    async with SimServer(SimConfig(latency_ms=60, jitter_ms=20, capacity=48, seed=7),
                         port=0) as sim:
        llm = ["--llm-base-url", sim.base_url, "--strong-model", "sim-strong",
               "--backbone-model", "sim-backbone", "--config", str(settings)]
        workers = [WorkerProc.start(f"w{i}", work, "all", *llm) for i in range(3)]
        try:
            deadline = time.monotonic() + 90
            while not all(w.events("partitions_assigned") for w in workers):
                assert time.monotonic() < deadline, "workers never got partitions"
                await asyncio.sleep(0.2)
            source = write_jsonl(work / "in.jsonl", sample_records(items))
            await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "iterrefine.cli", "ingest", str(source),
                                 "--config", str(settings), "--log-level", "warning"],
                check=True, cwd=ROOT)
            await _until(lambda: sim.stats.total >= items)  # well into the run, calls in flight
            workers[0].kill()
            killed = time.monotonic()
            recovered_s = None
            while time.monotonic() - killed < cap_s:
                ingested, finished, _ = await _finished(config, bootstrap)
                if ingested == items and finished == items:
                    recovered_s = round(time.monotonic() - killed, 1)
                    break
                await asyncio.sleep(0.5)
            for w in workers[1:]:
                w.process.send_signal(signal.SIGTERM)
            codes = [await asyncio.to_thread(w.process.wait, 60) for w in workers[1:]]
        finally:
            stop_all(workers)
    ingested, finished, duplicates = await _finished(config, bootstrap)
    argv = [sys.executable, "-m", "iterrefine.cli", "export", "-o", str(work / "out.jsonl"),
            "--config", str(settings), "--log-level", "warning"]
    export = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True,
                                     cwd=ROOT, check=False)
    return {"broker": name, "items": items, "recovered": recovered_s is not None,
            "seconds_from_kill_to_last_item": recovered_s, "cap_s": cap_s,
            "finished": finished, "duplicate_terminal_records": duplicates,
            "survivor_exit_codes": codes, "export_exit_code": export.returncode,
            "export_stderr": export.stderr.strip()[-400:]}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=120)
    parser.add_argument("--cap-s", type=float, default=90.0)
    args = parser.parse_args()
    results = []
    brokers: list[tuple[str, AbstractContextManager[Any]]] = [
        ("tansu", EmbeddedBroker()), ("noida", NoidaBroker())]
    for name, broker in brokers:
        with broker as running:
            results.append(await one_broker(name, running.bootstrap_servers, args.items,
                                            args.cap_s))
    print(json.dumps({"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                  "load_1m": os.getloadavg()[0]},
                      "results": results}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
