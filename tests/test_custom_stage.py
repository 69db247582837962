"""examples/custom_stage: a user stage and its config, with no edit inside the package."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from iterrefine.app.pipeline import load_graph
from iterrefine.config import load_config
from iterrefine.testing import ScriptedLLM, run_records

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "custom_stage"
CONFIG = EXAMPLE / "iterrefine.toml"
SAMPLE = EXAMPLE / "sample.jsonl"
#: A judge that finds every item usable and high: the items go straight to curated.
HIGH = json.dumps({"usable": True, "reason": "fine", "correctness": 9, "completeness": 9,
                   "clarity": 9, "compliance": 9, "reasoning": 9, "verdict": "high",
                   "justification": "a clear, correct item"})


def test_the_example_config_inserts_the_stage_before_route() -> None:
    """[[stages]] before = route: the user stage reads items.scored, route its topic."""
    graph = load_graph(load_config(CONFIG))
    assert graph.names == ("score", "near_duplicates", "route", "refine", "review", "align")
    assert graph.inputs()["near_duplicates"] == "items.scored"
    assert graph.inputs()["route"] == "items.near_duplicates"
    assert not graph["near_duplicates"].waits


async def test_near_duplicates_are_rejected_with_their_reason(broker: str) -> None:
    """With scripted judge answers, every near-duplicate is rejected naming its twin."""
    rows = [
        {"id": "a", "instruction": "Name three primary colours.", "output": "Red, blue, yellow."},
        {"id": "b", "instruction": "  name THREE primary colours ", "output": "Red."},
        {"id": "c", "instruction": "Name three secondary colours.", "output": "Green..."},
    ]
    graph = load_graph(load_config(CONFIG))
    async with ScriptedLLM({"score": HIGH}) as llm:
        result = await run_records(rows, graph=graph, llm=llm, bootstrap=broker)
    assert sorted(item.id for item in result.curated) + [r.id for r in result.rejected] in (
        ["a", "c", "b"], ["b", "c", "a"])  # whichever twin arrives first is kept
    (rejected,) = result.rejected
    assert "duplicate" in rejected.status_reason
    assert {task for task, _ in llm.requests} == {"score"}


@pytest.mark.slow
def test_the_documented_command_puts_duplicates_in_the_rejected_file(
    broker: str, tmp_path: Path
) -> None:
    """`iterrefine run ... --config examples/custom_stage/iterrefine.toml` from the repo root."""
    out = tmp_path / "out" / "curated.jsonl"
    subprocess.run(
        [sys.executable, "-m", "iterrefine.cli", "run", str(SAMPLE.relative_to(ROOT)),
         "--llm", "sim", "-o", str(out), "--config", str(CONFIG.relative_to(ROOT)),
         "--bootstrap", broker, "--topic-prefix", f"t{uuid.uuid4().hex[:10]}.",
         "--summary", str(tmp_path / "summary.json"), "--log-level", "warning"],
        cwd=ROOT, check=True, capture_output=True, timeout=240,
    )
    lines = out.with_suffix(".rejected.jsonl").read_text().splitlines()
    rejected = [json.loads(line) for line in lines]
    duplicates = [r for r in rejected if "duplicate" in r["item"]["status_reason"]]
    assert len(duplicates) == 3, rejected
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["items_in"] == 13 and summary["complete"]


def test_a_stage_writing_to_a_topic_nobody_reads_stops_the_run_before_it_starts(
    tmp_path: Path,
) -> None:
    """A user stage whose output no stage reads: exit 2 naming stage and topic, no traceback."""
    (tmp_path / "lost_stage.py").write_text(
        "from iterrefine import StageSpec\n"
        "SPEC = StageSpec(name='lost', input_topic='items.scored', outputs=('items.nowhere',),\n"
        "                 waits=False, handler=lambda ctx: (lambda item: []))\n")
    config = tmp_path / "iterrefine.toml"
    config.write_text('import_paths = ["."]\n[[stages]]\nspec = "lost_stage:SPEC"\n')
    result = subprocess.run(
        [sys.executable, "-m", "iterrefine.cli", "run", str(SAMPLE), "--llm", "sim",
         "-o", str(tmp_path / "out.jsonl"), "--config", str(config),
         "--data-dir", str(tmp_path / "state")],
        capture_output=True, text=True, check=False, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "'lost'" in result.stderr and "items.nowhere" in result.stderr
    assert "Traceback" not in result.stderr
