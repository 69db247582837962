"""The Python API: curate records or a file from a script or a notebook; the dataset card."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import msgspec
import pytest

import iterrefine
from iterrefine import Curation, curate, dataset_card
from iterrefine.app.run import RunOptions, run_pipeline
from iterrefine.config import LLMRoleConfig
from iterrefine.errors import ConfigError

from .helpers import unique_config
from .pipeline_support import FAST_SIM, sample_records, write_jsonl

PRICED = {"strong": LLMRoleConfig(price_in_per_mtok=3.0, price_out_per_mtok=15.0),
          "backbone": LLMRoleConfig(price_in_per_mtok=0.2, price_out_per_mtok=0.6)}


def _config(broker: str, tmp_path: Path, **changes: object) -> iterrefine.Config:
    base = unique_config()
    return msgspec.structs.replace(
        base, kafka=msgspec.structs.replace(base.kafka, bootstrap_servers=broker),
        data_dir=str(tmp_path / "state"), **changes)


def test_records_in_rows_and_summary_out_with_bad_records_in_the_dlq(
    broker: str, tmp_path: Path
) -> None:
    """A list of 12 records (one not a record) → every one comes back, in exactly one list."""
    records = [*sample_records(11), {"no": "instruction"}]
    result = curate(records, llm="sim", sim=FAST_SIM, config=_config(broker, tmp_path))
    assert isinstance(result, Curation) and result.paths is None
    assert result.summary["items_in"] == 12 and result.summary["simulated"] is True
    assert len(result.curated) + len(result.rejected) + len(result.dlq) == 12
    assert len(result.dlq) == 1 and result.dlq[0]["reason"] == "unknown_shape"
    assert result.exit_code == 0  # an invalid input record is not a processing fault
    instructions = {r["instruction"] for r in records[:11]}
    assert {row["item"]["original"]["instruction"] for row in result.curated
            + result.rejected} == instructions
    assert all(row["item"]["provenance"]["simulated"] for row in result.curated)


async def test_in_a_running_event_loop_as_in_jupyter_with_a_cost_cap(
    broker: str, tmp_path: Path
) -> None:
    """`curate` from inside a running loop (a notebook cell) works; max_cost stops it: code 4."""
    source = write_jsonl(tmp_path / "in.jsonl", sample_records(40))
    result = curate(source, llm="sim", sim=FAST_SIM, max_cost=0.15,
                    output=tmp_path / "out.jsonl",
                    config=_config(broker, tmp_path, llm=PRICED))
    assert result.exit_code == 4
    assert result.summary["stopped_by_cost_cap"]["max_cost"] == 0.15
    assert result.summary["cost"]["run"]["money"] <= 0.15
    assert result.paths is not None and result.paths.curated == tmp_path / "out.jsonl"
    on_disk = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in on_disk] == [r["id"] for r in result.curated]
    assert 0 < len(result.curated) < 40


async def test_a_run_writes_a_dataset_folder_with_a_card_from_its_summary(
    broker: str, tmp_path: Path
) -> None:
    """`--save-dataset DIR` (RunOptions.dataset_dir): save_to_disk + README.md card, any shape."""
    source = write_jsonl(tmp_path / "in.jsonl", sample_records(20))
    folder = tmp_path / "dataset"
    result = await run_pipeline(
        _config(broker, tmp_path, preset=None), RunOptions(
            input=source, output=tmp_path / "out.jsonl", sim=FAST_SIM, shape="alpaca",
            dataset_dir=folder, timeout_s=120))
    summary = result.summary
    loaded = datasets.load_from_disk(str(folder))
    assert len(loaded) == summary["curated"]
    assert loaded.column_names == ["id", "instruction", "input", "output", "status", "lineage"]
    assert set(loaded["status"]) <= {"high", "refined", "unrefined"}
    lineage = json.loads(loaded["lineage"][0])
    assert lineage["id"] == loaded["id"][0]
    card = (folder / "README.md").read_text()
    outcomes = summary["outcomes"]
    assert card.startswith("---\ntags:\n- iterrefine\n- instruction-tuning\n- simulated\n")
    assert "**SIMULATED" in card and "- Simulated: yes" in card
    assert f"| refined | {outcomes.get('refined', 0) + outcomes.get('refined_unconverged', 0)} |" \
        in card
    assert f"| kept as they were | {outcomes.get('high', 0) + outcomes.get('unrefined', 0)} |" \
        in card
    assert f"| rejected (judged unusable) | {summary['rejected']} |" in card
    assert "strong: sim-strong" in card and "backbone: sim-backbone" in card
    assert "- Preset: none" in card
    prompt_version = lineage["provenance"]["prompt_version"]
    assert prompt_version and f"- Prompt version: {prompt_version}" in card


@pytest.mark.unit
def test_a_card_of_a_real_run_says_so_and_names_its_models_and_preset() -> None:
    """No simulator: no SIMULATED banner; the preset and the judge's lift are stated."""
    row = {"item": {"provenance": {"models": {"strong": "big-70b", "backbone": "small-8b"},
                                   "prompt_version": "v7", "simulated": False}}}
    summary = {"simulated": False, "items_in": 3, "rejected": 1, "dlq": 0,
               "outcomes": {"high": 1, "refined": 1, "rejected": 1},
               "preset": {"name": "paper"},
               "quality": {"refined": {"count": 1, "before_mean": 4.0, "after_mean": 7.5}}}
    card = dataset_card(summary, [row, row])
    assert "SIMULATED" not in card and "- Simulated: no" in card
    assert "- Models: backbone: small-8b, strong: big-70b" in card
    assert "- Preset: paper" in card and "| in this dataset (curated) | 2 |" in card
    assert "before → after: 4.0 → 7.5" in card


@pytest.mark.unit
def test_without_an_llm_the_api_says_how_to_get_one(tmp_path: Path) -> None:
    """No `llm="sim"` and no endpoints: the same clear error as the command line."""
    source = write_jsonl(tmp_path / "in.jsonl", sample_records(2))
    with pytest.raises(ConfigError, match='no LLM configured: pass llm="sim"'):
        curate(source, config=unique_config())
