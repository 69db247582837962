"""README "Streaming, locally" works as written: its commands, run in order by bash."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from iterrefine.cli import build_parser
from iterrefine.io.export import load_rows
from iterrefine.processes import free_port

ROOT = Path(__file__).parent.parent


def recipe() -> str:
    """The bash block of the README section "Streaming, locally"."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Streaming, locally"):]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


@pytest.mark.unit
def test_default_ports_do_not_clash() -> None:
    """broker up, sim-llm and view listen on different ports, none on Kafka's 9092."""
    def default_port(*argv: str) -> int:
        args = build_parser(argv[0]).parse_args(list(argv))
        return int(args.port)

    ports = [default_port("broker", "up"), default_port("sim-llm"),
             default_port("view", "--from", "x.jsonl")]
    assert len(set(ports)) == 3 and 9092 not in ports, ports
    assert "broker up" in recipe() and str(ports[0]) in recipe()


@pytest.mark.slow
def test_the_streaming_recipe_runs_as_written(tmp_path: Path) -> None:
    """broker up, two `worker all --llm sim`, continuous ingest, export until complete,
    replay, status with the workers' cache, SIGTERM, broker down: every step works."""
    script = recipe()
    # Only the ports change: another test or program may hold the defaults.
    broker_port, m1, m2 = free_port(), free_port(), free_port()
    script = script.replace("iterrefine broker up", f"iterrefine broker up --port {broker_port}")
    script = script.replace("9101", str(m1)).replace("9102", str(m2))
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
           f"{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}
    try:
        done = subprocess.run(["bash", "-c", "set -m\n" + script], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300, check=False)
    finally:  # a failed step must not leave the broker behind
        subprocess.run([sys.executable, "-m", "iterrefine.cli", "broker", "down"],
                       cwd=tmp_path, env=env, capture_output=True, check=False)
    out, err = done.stdout, done.stderr
    assert done.returncode == 0, err[-3000:]
    rows = sum(len(load_rows(tmp_path / "out" / name)) for name in
               ("stream.jsonl", "stream.rejected.jsonl", "stream.dlq.jsonl"))
    assert rows == 20, out
    assert "items: 20 of 20 ingested finished" in out
    assert "replayed 20 of 20 records" in out
    assert "workers' LLM cache (live):" in out
    assert "Traceback" not in err and "stage_stopped_with_unsaved_offsets" not in err
    assert err.count("stage_stopped") >= 10  # 5 stages in each of the 2 workers
    assert not (tmp_path / ".iterrefine" / "broker.json").exists()
