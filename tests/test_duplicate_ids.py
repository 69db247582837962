"""Duplicate ids: first wins within one input, newest revision wins across ingests."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from iterrefine.app.run import RunOptions, run_pipeline
from iterrefine.cli.ingest import ingest
from iterrefine.config import Config
from iterrefine.io.ingest import RawRecord, chunked_lines
from iterrefine.observe.metrics import Metrics
from iterrefine.sim import SimServer

from .helpers import wait_until
from .hostile_corpus import corpus
from .pipeline_support import (
    assert_conserved,
    newest,
    pipeline,
    pipeline_config,
    start_watcher,
    wait_for_ids,
    write_jsonl,
)

ROOT = Path(__file__).parent.parent




async def test_the_first_record_with_an_id_wins_on_every_run(
    broker: str, sim: SimServer, tmp_path: Path
) -> None:
    """Same id, different content: the first is processed, the second is a duplicate_id row."""
    records = [
        {"id": "tea", "instruction": "How do I brew grass tea?", "output": "Steep it."},
        {"id": "tea", "instruction": "How long is water boiling?", "output": "Minutes."},
        {"id": 7, "instruction": "Seven?", "output": "7"},
        {"id": "7", "instruction": "Seven?", "output": "7"},
    ]
    for attempt in range(3):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        metrics = Metrics()
        result = await run_pipeline(pipeline_config(broker, sim), RunOptions(
            input=write_jsonl(folder / "input.jsonl", records), output=folder / "out.jsonl",
            timeout_s=120), metrics=metrics)
        rows = assert_conserved(result, set(result.ingest.ids))
        kept = {row["id"]: row for row in rows["curated"] + rows["rejected"]}
        assert set(kept) == {"tea", "7"}
        assert kept["tea"]["item"]["original"]["instruction"] == "How do I brew grass tea?"
        dlq = {row["reason"]: row for row in rows["dlq"]}
        assert set(dlq) == {"duplicate_id", "duplicate_record"}
        assert dlq["duplicate_id"]["line"] == "2" and "boiling" in dlq["duplicate_id"]["original"]
        assert "input.jsonl:1" in dlq["duplicate_id"]["message"]
        assert dlq["duplicate_record"]["line"] == "4"
        assert result.summary["duplicates_at_ingest"] == {"duplicate_id": 1,
                                                          "duplicate_record": 1}
        assert result.summary["dlq_reasons"] == {"duplicate_id": 1, "duplicate_record": 1}
        for reason in ("duplicate_id", "duplicate_record"):
            assert metrics.registry.get_sample_value(
                "iterrefine_dlq_total", {"stage": "ingest", "reason": reason}) == 1


async def test_a_later_ingest_of_an_id_is_a_newer_revision(broker: str, sim: SimServer) -> None:
    """Two separate ingests of one id: no duplicate refusal, the export keeps the newer one."""
    config = pipeline_config(broker, sim)

    async def lines(record: dict[str, str]) -> AsyncIterator[RawRecord]:
        yield RawRecord(json.dumps(record).encode(), 1, "stdin")

    watcher = await start_watcher(config, broker)
    try:
        async with pipeline(config, broker):
            first = await ingest(config, broker, lines(
                {"id": "doc", "instruction": "Old question?", "output": "Old."}))
            await wait_for_ids(watcher, {"doc"}, timeout_s=45)
            second = await ingest(config, broker, lines(
                {"id": "doc", "instruction": "New question?", "output": "New."}))
            assert first.duplicate_ids == second.duplicate_ids == 0
            await wait_for_ids(watcher, {"doc"}, timeout_s=45)
            await _until_newest_is(config, broker, "New question?")
    finally:
        await watcher.stop()


async def _until_newest_is(config: Config, broker: str, instruction: str) -> None:
    async def chosen() -> bool:
        selection = await newest(config, broker)
        terminal = selection.by_id.get("doc")
        return bool(terminal and terminal.item
                    and terminal.item.original.instruction == instruction)

    await wait_until(chosen, timeout_s=45, interval_s=0.5)


def test_ingest_command_survives_the_malformed_corpus(broker: str, tmp_path: Path) -> None:
    """`iterrefine ingest FILE` with 1000-deep, huge, BOM, duplicate lines: exit 0, counts."""
    data, expected = corpus()
    source = tmp_path / "corpus.jsonl"
    source.write_bytes(data)
    done = subprocess.run(
        [sys.executable, "-m", "iterrefine.cli", "ingest", str(source), "--bootstrap", broker,
         "--topic-prefix", "tingestcorpus.", "--log-level", "error"],
        cwd=ROOT, capture_output=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    out = done.stdout.decode()
    assert f"ingested {len(expected)} records" in out
    assert "7 records reused an id" in out
    assert b"Traceback" not in done.stderr


@pytest.mark.unit
async def test_a_bom_opening_stdin_is_not_part_of_the_first_record() -> None:
    """A UTF-8 BOM at the start of a piped stream is dropped like at a file's start."""
    async def chunks() -> AsyncIterator[bytes]:
        yield b'\xef\xbb\xbf{"instruction": "a", "output": "b"}\r\n{"x": 1}\n'
        yield b""

    records = [r async for r in chunked_lines(chunks(), "stdin", max_line_bytes=1000)]
    assert [r.data for r in records] == [b'{"instruction": "a", "output": "b"}', b'{"x": 1}']
