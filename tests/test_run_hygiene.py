"""Process hygiene of ``iterrefine run``: no orphans, no hang on a reused broker, resume."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import sigkill_when_it_has_children

SAMPLE = Path(__file__).parent.parent / "examples" / "dolly_sample.jsonl"


def cli(*argv: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "iterrefine.cli", *argv], capture_output=True,
                          text=True, timeout=timeout_s, check=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port




def small_input(tmp_path: Path, n: int = 30) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[:n]))
    return path


@pytest.fixture
def broker_up(tmp_path: Path) -> Iterator[str]:
    """A background ``iterrefine broker up`` broker in its own data dir."""
    data_dir = str(tmp_path / "state")
    up = cli("broker", "up", "--data-dir", data_dir, "--port", str(free_port()))
    assert up.returncode == 0, up.stderr
    yield data_dir
    cli("broker", "down", "--data-dir", data_dir)


@pytest.mark.slow
def test_run_never_silently_shares_a_broker_up_broker_and_refuses_a_busy_pipeline(
    broker_up: str, tmp_path: Path
) -> None:
    """With a `broker up` broker holding a backlog, `run` without --bootstrap runs on a
    broker of its own (the backlog stays untouched); pointed at it, it says so and refuses
    the busy pipeline (exit 2, naming the backlog); under a prefix of its own it runs there."""
    source = small_input(tmp_path)
    bootstrap = json.loads((Path(broker_up) / "broker.json").read_text())["bootstrap_servers"]
    (tmp_path / "backlog").mkdir()
    ingested = cli("ingest", str(small_input(tmp_path / "backlog", 5)), "--data-dir", broker_up,
                   "--log-level", "warning")
    assert ingested.returncode == 0, ingested.stderr
    common = ["--llm", "sim", "--data-dir", broker_up, "--no-progress", "--log-level",
              "warning", "--sim-latency-ms", "20", "--sim-jitter-ms", "5"]
    own = cli("run", str(source), "-o", str(tmp_path / "own.jsonl"), *common)
    assert own.returncode == 0, own.stderr[-2000:]
    refused = cli("run", str(source), "-o", str(tmp_path / "shared.jsonl"),
                  "--bootstrap", bootstrap, *common)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert f"running on the Kafka cluster at {bootstrap}" in refused.stderr
    assert ("is busy: 5 records of iterrefine.items.raw not yet processed by group "
            "iterrefine.score") in refused.stderr
    # A pipeline of its own on that broker runs there (the rerun: test_production_kafka).
    shared = cli("run", str(source), "-o", str(tmp_path / "mine.jsonl"), "--bootstrap",
                 bootstrap, "--topic-prefix", "mine.", "--workers", "2", *common)
    assert shared.returncode == 0, shared.stderr[-2000:]


@pytest.mark.slow
def test_sigkill_of_run_takes_broker_and_workers_along(tmp_path: Path) -> None:
    """kill -9 of run --workers 2: its embedded broker and worker child die with it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "iterrefine.cli", "run", str(small_input(tmp_path, 120)),
         "-o", str(tmp_path / "o.jsonl"), "--llm", "sim", "--workers", "2", "--no-progress",
         "--data-dir", str(tmp_path / "d"), "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sigkill_when_it_has_children(proc)  # the broker, then the worker child


@pytest.mark.slow
def test_rerun_after_sigkill_pays_only_for_unanswered_calls(tmp_path: Path) -> None:
    """benchmarks/resume.py: kill -9 at half, rerun: curated ids as a clean run, ≤ 1.15×."""
    bench = Path(__file__).parent.parent / "benchmarks" / "resume.py"
    done = subprocess.run([sys.executable, str(bench)], capture_output=True, text=True,
                          timeout=240, check=True)
    result = json.loads(done.stdout)
    assert result["curated_ids_identical"]
    assert result["killed"]["orphans_2s_after_kill"] == 0
    # The requests in flight at the kill are paid twice; the rest come from the cache.
    assert result["ratio"] <= 1.15


@pytest.mark.slow
def test_the_next_run_removes_what_a_killed_workers_run_left_in_the_temp_dir(
    tmp_path: Path,
) -> None:
    """kill -9 of run --workers 2 leaves its children's config folder (nothing can clean
    up a SIGKILL); the next run, whatever it does, removes it."""
    import os

    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "iterrefine.cli", "run", str(small_input(tmp_path, 120)),
         "-o", str(tmp_path / "o.jsonl"), "--llm", "sim", "--workers", "2", "--no-progress",
         "--data-dir", str(tmp_path / "d"), "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    sigkill_when_it_has_children(proc)
    left = list(temp.glob("iterrefine-workers-*"))
    assert left and any(folder.glob("config-*.json") for folder in left)
    again = subprocess.run([sys.executable, "-m", "iterrefine.cli", "run",
                            str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "x.jsonl"),
                            "--llm", "sim"], capture_output=True, text=True, timeout=60,
                           check=False, env=env)
    assert again.returncode == 2
    assert list(temp.glob("iterrefine-workers-*")) == []


@pytest.mark.unit
def test_only_folders_of_runs_that_are_gone_are_swept(tmp_path: Path) -> None:
    """A folder named after a live run is kept; one of a dead pid goes; others untouched."""
    import os

    from iterrefine.app.prespawn import sweep_orphaned_workdirs

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    live = tmp_path / f"iterrefine-workers-{os.getpid()}-abc"
    dead = tmp_path / f"iterrefine-workers-{gone.pid}-def"
    foreign = tmp_path / "iterrefine-workers-xyz"
    for folder in (live, dead, foreign):
        folder.mkdir()
        (folder / "config-0.json").write_text("{}")
    assert sweep_orphaned_workdirs(str(tmp_path)) == [dead]
    assert live.exists() and foreign.exists() and not dead.exists()
