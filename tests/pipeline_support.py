"""Running the real stages in the test process, and reading what the exporter would choose.

Also the pipeline tests' shared inputs: the simulator's fast settings, sample records,
and a config pointing the roles at a running simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Collection
from pathlib import Path
from typing import Any

import msgspec

from iterrefine.app.pipeline import serve_pipeline
from iterrefine.app.run import RunOptions, RunResult, run_pipeline, sim_roles
from iterrefine.config import Config, PipelineConfig
from iterrefine.consumers import PIPELINE
from iterrefine.io.export import Selection, load_rows, outcome_of_topic, terminal_of
from iterrefine.io.watch import TerminalWatcher
from iterrefine.kafka.clients import read_to_end
from iterrefine.kafka.topics import TopicNames, ensure_topics
from iterrefine.sim import SimConfig, SimServer
from iterrefine.tasks.prompts import PROMPT_VERSION

from .helpers import unique_config


@contextlib.asynccontextmanager
async def pipeline(
    config: Config, broker: str, prompt_version: str = PROMPT_VERSION
) -> AsyncIterator[None]:
    """Every stage in the background, stamping ``prompt_version`` (a deployed worker)."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve_pipeline(config, broker, stop=stop, simulated=True,
                                              prompt_version=prompt_version))
    try:
        yield
    finally:
        stop.set()
        await task


async def newest(config: Config, broker: str) -> Selection:
    """What `iterrefine export` chooses: the newest revision per item id."""
    names = TopicNames(config.kafka.topic_prefix)
    selection = Selection()
    records = await read_to_end(config.kafka, broker, names.terminal())
    for record in sorted(records, key=lambda r: r.timestamp):
        selection.offer(terminal_of(record, outcome_of_topic(names, record.topic)))
    return selection


async def start_watcher(config: Config, broker: str) -> TerminalWatcher:
    """A watcher of the terminal topics from their current end (created first if missing)."""
    await ensure_topics(config.kafka, broker, PIPELINE.topics())
    watcher = TerminalWatcher(config.kafka, broker)
    await watcher.start()
    return watcher


async def wait_for_ids(watcher: TerminalWatcher, ids: Collection[str], timeout_s: float) -> None:
    """Until every id reached a terminal topic (assert it did within ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    seen = await watcher.wait_for(ids, should_stop=lambda: time.monotonic() > deadline)
    assert seen == len(ids), f"only {seen} of {len(ids)} items finished in {timeout_s} s"


EXAMPLES = Path(__file__).parent.parent / "examples"
FAST_SIM = SimConfig(latency_ms=5, jitter_ms=3, capacity=64, low_share=0.6, lose_prob=0.5,
                     retry_after_s=0.05)


def sample_records(n: int = 200) -> list[dict[str, Any]]:
    """``n`` Dolly-sample items (the 120 real ones, then reworded copies)."""
    lines = (EXAMPLES / "dolly_sample.jsonl").read_text().splitlines()
    base = [json.loads(line) for line in lines]
    records = list(base)
    while len(records) < n:
        source = base[len(records) % len(base)]
        records.append({**source, "instruction": f"Briefly: {source['instruction']}"})
    return records[:n]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def pipeline_config(broker: str, sim: SimServer, **pipeline: Any) -> Config:
    base = unique_config(retry_base_s=0.02, retry_max_s=0.2)
    config = msgspec.structs.replace(
        base,
        kafka=msgspec.structs.replace(base.kafka, bootstrap_servers=broker),
        pipeline=PipelineConfig(**pipeline),
    )
    return sim_roles(config, sim.base_url, FAST_SIM)


async def run(config: Config, tmp_path: Path, records: list[Any]) -> RunResult:
    source = write_jsonl(tmp_path / "input.jsonl", records)
    return await run_pipeline(config, RunOptions(input=source, output=tmp_path / "out.jsonl",
                                                 timeout_s=120))


def all_rows(result: RunResult) -> dict[str, list[dict[str, Any]]]:
    return {
        "curated": load_rows(result.paths.curated),
        "rejected": load_rows(result.paths.rejected),
        "dlq": load_rows(result.paths.dlq),
    }


def assert_conserved(result: RunResult, expected_ids: set[str]) -> dict[str, list[dict[str, Any]]]:
    rows = all_rows(result)
    ids = [row["id"] for kind in rows.values() for row in kind]
    assert len(ids) == len(set(ids)), "an item appears in more than one row"
    assert set(ids) == expected_ids
    assert result.complete
    return rows
