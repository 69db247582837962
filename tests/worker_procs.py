"""`iterrefine worker` processes for tests: start, read their JSON logs, stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iterrefine.config import Config

ROOT = Path(__file__).parent.parent


def write_worker_config(path: Path, config: Config, *, bootstrap: str | None = None) -> Path:
    """A TOML file with the test's topic prefix, short group timeouts and its own data dir.

    The data dir holds the LLM response cache: left at the default (``.iterrefine`` under
    the workers' working directory, the checkout), a rerun of a test on the same machine
    was answered from an earlier run's cache and its simulators saw no calls.
    """
    rt = config.runtime
    lines = [
        f'data_dir = "{path.parent / "worker-data"}"',
        "[kafka]",
        f'topic_prefix = "{config.kafka.topic_prefix}"',
        f"partitions = {config.kafka.partitions}",
        *([f'bootstrap_servers = "{bootstrap}"'] if bootstrap else []),
        "[runtime]",
        f"commit_interval_ms = {rt.commit_interval_ms}",
        f"session_timeout_ms = {rt.session_timeout_ms}",
        f"heartbeat_interval_ms = {rt.heartbeat_interval_ms}",
        f"drain_timeout_s = {rt.drain_timeout_s}",
        f"retry_base_s = {rt.retry_base_s}",
        f"retry_max_s = {rt.retry_max_s}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class WorkerProc:
    """One ``iterrefine worker`` child with its log file."""

    name: str
    log_path: Path
    process: subprocess.Popen[bytes]
    killed: bool = field(default=False)

    @classmethod
    def start(cls, name: str, log_dir: Path, *args: str) -> WorkerProc:
        log_path = log_dir / f"{name}.log"
        with log_path.open("ab") as log_file:  # the child keeps its own descriptor
            process = subprocess.Popen(
                [sys.executable, "-m", "iterrefine.cli", "worker", *args, "--log-json"],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return cls(name, log_path, process)

    def events(self, event: str | None = None, *, after: int = 0) -> list[dict[str, Any]]:
        """JSON log events (from byte ``after`` on), optionally only those named ``event``."""
        out = []
        with self.log_path.open("rb") as handle:
            handle.seek(after)
            for line in handle:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # not ours (e.g. a library's plain line)
                if isinstance(entry, dict) and (event is None or entry.get("event") == event):
                    out.append(entry)
        return out

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def assignment(self, stage: str, *, after: int = 0) -> set[int]:
        """The partitions of ``stage`` this worker holds, replaying its rebalance events."""
        current: set[int] = set()
        for entry in self.events(after=after):
            if entry.get("stage") != stage:
                continue
            if entry.get("event") == "partitions_assigned":
                current = set(entry["partitions"])
            elif entry.get("event") == "partitions_revoked":
                current -= set(entry["partitions"])
        return current

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.killed = True

    def terminate(self, timeout_s: float = 60) -> int:
        """SIGTERM and wait: the exit code (a graceful drain exits 0)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def stop_all(workers: list[WorkerProc]) -> None:
    """Last resort in ``finally``: no worker outlives its test."""
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait(timeout=30)
