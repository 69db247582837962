"""A second, independent Kafka-protocol broker for the tests: noida-db (PyPI wheel).

The embedded Tansu is lenient where Apache Kafka is strict (it creates a topic with
replication factor 3 on one broker, or with an illegal name); noida-db behaves like
Kafka there (end offsets, time lookups, DeleteRecords, idempotent producers,
transactions, replication enforced), so the tests that matter in production run on
both. What noida-db does differently from Kafka is named where a test meets it:
it **never drops a dead group member** (a SIGKILLed consumer keeps its partitions
until it rejoins; Kafka moves them after ``session.timeout.ms``).

Its binary is built against glibc 2.39 with a weak reference only; on an older glibc
(Debian 12: 2.36) it prints "weak version `GLIBC_2.39' not found" once and runs.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
import tempfile
import time
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Self

from iterrefine.broker.embedded import broker_answers
from iterrefine.processes import free_port, log_tail

#: Why a test that needs noida-db was skipped, or None when it can run here.
NOIDA_MISSING: str | None = None
try:
    import noida_db  # noqa: F401  (only its packaged binary is used)
except ImportError:
    NOIDA_MISSING = "noida-db is not installed (pip install noida-db; the test extra has it)"


def noida_binary() -> Path:
    path = Path(str(resources.files("noida_db").joinpath("noida-db")))
    mode = path.stat().st_mode
    if not mode & stat.S_IXUSR:  # pip may unpack the wheel's binary without the x bit
        path.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


class NoidaBroker:
    """noida-db's Kafka service alone, on a free loopback port, in a scratch data dir."""

    def __init__(self, *, start_timeout_s: float = 20.0) -> None:
        self.port = free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="noida-"))
        self._log = self._dir / "noida.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._start_timeout_s = start_timeout_s

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(
                [str(noida_binary()), "start", "--data-dir", str(self._dir / "data"),
                 "--only", "kafka", "--kafka-port", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + self._start_timeout_s
        while not broker_answers(self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"noida-db did not start on port {self.port}:\n"
                                   f"{log_tail(self._log)}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

