"""Formats through the whole pipeline: Parquet in/out, chat in → messages out, DLQ rerun."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from iterrefine.app.run import RunOptions, run_pipeline
from iterrefine.io.export import Terminal
from iterrefine.io.inputs import InputSpec
from iterrefine.io.outputs import read_rows, shaped_row
from iterrefine.item.records import item_from_raw
from iterrefine.sim import SimServer

from .pipeline_support import pipeline_config, sample_records, write_jsonl


def _chat(i: int, *, turns: int = 1) -> dict[str, Any]:
    messages: list[dict[str, str]] = [{"role": "system", "content": "Answer in one line."}]
    for turn in range(turns):
        messages += [{"role": "user", "content": f"Question {i}.{turn}: why is the sky blue?"},
                     {"role": "assistant", "content": f"Rayleigh scattering ({i}.{turn})."}]
    return {"id": f"chat-{i}", "messages": messages}


async def test_parquet_in_parquet_out_keeps_ids(
    broker: str, sim: SimServer, tmp_path: Path
) -> None:
    """Parquet in → Parquet out (full shape): every id comes back; rejected rows give a reason."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    records = [{"id": f"p{i}", **r} for i, r in enumerate(sample_records(16))]
    source = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(records), source, row_group_size=5)
    result = await run_pipeline(pipeline_config(broker, sim), RunOptions(
        input=source, output=tmp_path / "out.parquet", timeout_s=120))
    assert result.complete
    assert result.paths.curated.suffix == ".parquet" and result.paths.rejected.suffix == ".parquet"
    curated = list(read_rows(result.paths.curated))
    rejected = list(read_rows(result.paths.rejected))
    assert {r["id"] for r in curated + rejected} == {r["id"] for r in records}
    assert all(r["item"]["id"] == r["id"] for r in curated)  # lineage survives as JSON text
    assert all(r["reason"] for r in rejected)


async def test_chat_in_messages_out_and_multi_turn_to_dlq_then_rerun(
    broker: str, sim: SimServer, tmp_path: Path
) -> None:
    """Chat in → messages out (system turn kept); multi-turn → DLQ; the fixed DLQ file reruns."""
    records = [_chat(i) for i in range(8)] + [_chat(99, turns=2)]
    source = write_jsonl(tmp_path / "chat.jsonl", records)
    config = pipeline_config(broker, sim)
    result = await run_pipeline(config, RunOptions(
        input=source, output=tmp_path / "out.jsonl", timeout_s=120, shape="messages"))
    curated = list(read_rows(result.paths.curated))
    rejected = list(read_rows(result.paths.rejected))
    dlq = list(read_rows(result.paths.dlq))
    assert {r["id"] for r in curated + rejected} == {f"chat-{i}" for i in range(8)}
    for row in curated:
        assert set(row) == {"id", "messages"}
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
        assert row["messages"][0]["content"] == "Answer in one line."
    assert [r["reason"] for r in dlq] == ["multi_turn"]
    assert json.loads(dlq[0]["original"])["id"] == "chat-99"

    # Fix the dead letter (keep its first exchange) and run the DLQ file itself.
    fixed = json.loads(dlq[0]["original"])
    fixed["messages"] = fixed["messages"][:3]
    dlq[0]["original"] = json.dumps(fixed)
    rerun_input = write_jsonl(tmp_path / "fixed.dlq.jsonl", dlq)
    rerun = await run_pipeline(config, RunOptions(
        input=rerun_input, output=tmp_path / "rerun.jsonl", timeout_s=120, shape="sharegpt",
        input_spec=InputSpec(str(rerun_input))))
    rows = list(read_rows(rerun.paths.curated)) + list(read_rows(rerun.paths.rejected))
    assert [r["id"] for r in rows] == ["chat-99"]
    assert rows[0]["conversations"][1] == {"from": "human",
                                           "value": "Question 99.0: why is the sky blue?"}


@pytest.mark.unit
def test_training_shapes_hold_only_training_fields() -> None:
    """alpaca/sharegpt rows hold id and the training fields; rejected ones add status+reason."""
    item = item_from_raw(json.dumps({"id": "a", "instruction": "Sum?", "input": "1, 2",
                                     "output": "3"}).encode())
    item = item.with_changes(status="rejected", status_reason="not a reasoning task")
    curated = Terminal(id="a", outcome="curated", revision=0, timestamp_ms=0, item=item,
                       meta={}, raw=b"")
    rejected = Terminal(id="a", outcome="rejected", revision=0, timestamp_ms=0, item=item,
                        meta={}, raw=b"")
    assert shaped_row(curated, "alpaca") == {"id": "a", "instruction": "Sum?", "input": "1, 2",
                                             "output": "3"}
    assert shaped_row(curated, "sharegpt")["conversations"] == [
        {"from": "human", "value": "Sum?\n\n1, 2"}, {"from": "gpt", "value": "3"}]
    row = shaped_row(rejected, "full")
    assert (row["status"], row["reason"]) == ("rejected", "not a reasoning task")
