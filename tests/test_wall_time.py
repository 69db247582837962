"""The summary's wall time counts from this command's start, however it was launched."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from iterrefine.observe.proctime import IDLE_BEFORE_EXEC_S, startup_s

from .pipeline_support import sample_records, write_jsonl

ROOT = Path(__file__).parent.parent


def test_a_shell_that_execs_iterrefine_late_does_not_count_its_own_time(
    broker: str, tmp_path: Path
) -> None:
    """`sh -c 'sleep 3; exec iterrefine run …'` reports the run, not the shell's 3 s before it."""
    source = write_jsonl(tmp_path / "in.jsonl", sample_records(10))
    summary_path = tmp_path / "summary.json"
    argv = [sys.executable, "-m", "iterrefine.cli", "run", str(source),
            "-o", str(tmp_path / "out.jsonl"), "--llm", "sim", "--summary", str(summary_path),
            "--no-progress", "--bootstrap", broker, "--topic-prefix", f"t{uuid.uuid4().hex[:8]}.",
            "--sim-latency-ms", "5", "--sim-jitter-ms", "2", "--log-level", "warning",
            "--no-cache", "--data-dir", str(tmp_path / "state")]
    # The same process runs the shell, sleeps, then becomes iterrefine (as a Dockerfile
    # RUN, a container entrypoint or `… && pip install . && exec iterrefine run` do).
    script = f"sleep 3; exec {shlex.join(argv)}"
    started = time.perf_counter()
    done = subprocess.run(["sh", "-c", script], cwd=ROOT, capture_output=True, timeout=240)
    outside_s = time.perf_counter() - started
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    reported = json.loads(summary_path.read_text())["wall_time_s"]
    run_itself_s = outside_s - 3.0
    # At most the run as seen from outside (after the sleep) plus a little; at least most
    # of it (interpreter start-up and imports are counted).
    assert reported < run_itself_s + 0.5, (reported, outside_s)
    assert reported > 0.6 * run_itself_s, (reported, outside_s)


@pytest.mark.unit
def test_start_up_counts_unless_the_process_idled_before_this_interpreter_began() -> None:
    """A busy process's whole age is start-up; one that idled a second or more: only busy time."""
    assert startup_s(0.25, 0.2) == 0.25            # a cold read during start-up: counted
    assert startup_s(145.4, 0.31) == 0.31          # a shell waited for pip install: not
    assert startup_s(0.2 + IDLE_BEFORE_EXEC_S, 0.2) == 0.2
    assert startup_s(None, 0.2) == 0.0             # no /proc: from the first import
