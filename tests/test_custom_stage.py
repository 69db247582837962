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
from iterrefine.testing import ScriptedLLM, StageKit, make_item, run_records

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "custom_stage"
CONFIG = EXAMPLE / "iterrefine.toml"
SAMPLE = EXAMPLE / "sample.jsonl"
#: A judge that finds every item usable and high: the items go straight to curated.
HIGH = json.dumps({"usable": True, "reason": "fine", "correctness": 9, "completeness": 9,
                   "clarity": 9, "compliance": 9, "reasoning": 9, "verdict": "high",
                   "justification": "a clear, correct item"})


@pytest.mark.unit
def test_the_example_config_places_the_stage_before_the_judge() -> None:
    """[[stages]] before = score: the user stage reads items.raw, score its topic."""
    graph = load_graph(load_config(CONFIG))
    assert graph.names == ("near_duplicates", "score", "route", "refine", "review", "align")
    assert graph.inputs()["near_duplicates"] == "items.raw"
    assert graph.inputs()["score"] == "items.near_duplicates"
    assert not graph["near_duplicates"].waits


@pytest.mark.unit
async def test_in_process_a_duplicate_is_rejected_and_the_first_one_passes() -> None:
    """StageKit: the filter's own decision, in milliseconds, with no broker and no LLM."""
    config = load_config(CONFIG)
    async with StageKit(config=config, options={"compare_input": True}) as kit:
        first = await kit.handle("near_duplicates", make_item("Name a colour.", output="Red."))
        twin = await kit.handle("near_duplicates", make_item(" name A colour!", output="Blue."))
        other = await kit.handle("near_duplicates",
                                 make_item("Name a colour.", input="warm", output="Red."))
    assert [o.topic for o in first + twin + other] == [
        "items.near_duplicates", "items.rejected", "items.near_duplicates"]
    assert twin[0].item.status == "rejected" and first[0].item.id in twin[0].item.status_reason
    assert kit.requests == []  # a filter before the judge costs no call


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
    # Before the judge: the duplicate was never scored, so the judge saw two items, not three.
    assert [request.task for request in llm.requests] == ["score", "score"]


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
    # The 3 duplicates never reached the judge: 10 scores for 13 records (plus the
    # re-score of each refined item after alignment).
    scored = sum(summary["llm_answers"]["score"].values())
    assert scored == 10 + summary["outcomes"].get("refined", 0), summary["llm_answers"]


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
