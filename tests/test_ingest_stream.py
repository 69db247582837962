"""`iterrefine ingest -`: a real pipe, read as it grows, into a running pipeline."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from iterrefine.config import Config
from iterrefine.io.ingest import RawRecord, chunked_lines, key_for
from iterrefine.kafka.clients import read_to_end
from iterrefine.kafka.topics import TopicNames
from iterrefine.runtime.dlq import headers_dict
from iterrefine.sim import SimServer

from .helpers import alpaca, unique_config, wait_until
from .pipeline_support import (
    newest,
    pipeline,
    pipeline_config,
    sample_records,
    start_watcher,
    wait_for_ids,
)

ROOT = Path(__file__).parent.parent




async def start_ingest(config: Config, broker: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "iterrefine.cli", "ingest", "-", "--bootstrap", broker,
        "--topic-prefix", config.kafka.topic_prefix, "--log-level", "warning",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )


def item_id(line: bytes) -> str:
    return key_for(RawRecord(line, 0, "stdin"), max_bytes=64 * 1024)[0]


@pytest.mark.slow
async def test_three_bursts_through_a_pipe_each_finish_while_stdin_stays_open(
    broker: str, sim: SimServer
) -> None:
    """Bursts written to a live `ingest -` finish before EOF; every item ends exactly once."""
    config = pipeline_config(broker, sim)
    records = sample_records(90)
    bursts = [
        [json.dumps(r).encode() for r in records[30 * b:30 * (b + 1)]] + [b"{broken %d" % b]
        for b in range(3)
    ]
    expected = {item_id(line) for burst in bursts for line in burst}
    assert len(expected) == 93

    watcher = await start_watcher(config, broker)
    try:
        async with pipeline(config, broker):
            ingest = await start_ingest(config, broker)
            assert ingest.stdin is not None
            for burst in bursts:
                ingest.stdin.write(b"\n".join(burst) + b"\n")
                await ingest.stdin.drain()
                # The stream is still open: this burst must go all the way through anyway.
                await wait_for_ids(watcher, {item_id(line) for line in burst}, timeout_s=45)
                assert ingest.returncode is None
                await asyncio.sleep(1.0)
            ingest.stdin.close()
            out, err = await asyncio.wait_for(ingest.communicate(), timeout=30)
    finally:
        await watcher.stop()

    assert ingest.returncode == 0, err.decode()
    assert "ingested 93 records (3 invalid" in out.decode()
    problems = [line for line in err.decode().splitlines() if line.startswith("bad record:")]
    assert [p.split(":")[2] for p in problems] == ["31", "62", "93"]  # stdin line numbers
    chosen = await newest(config, broker)
    assert set(chosen.by_id) == expected  # each item exactly once in the export
    dead = [t for t in chosen.by_id.values() if t.outcome == "dlq"]
    assert sorted(t.meta["ingest.line"] for t in dead) == ["31", "62", "93"]
    assert {t.meta["reason"] for t in dead} == {"not_json"}


async def test_sigterm_stops_reading_and_confirms_what_was_sent(broker: str) -> None:
    """SIGTERM ends `ingest -` with exit 0; an over-long line is dead-lettered, not held."""
    config = unique_config()
    names = TopicNames(config.kafka.topic_prefix)
    huge = json.dumps({"instruction": "x" * 1_300_000, "output": "y"}).encode()
    ingest = await start_ingest(config, broker)
    assert ingest.stdin is not None and ingest.stdout is not None
    ingest.stdin.write(alpaca(1) + b"\n" + huge + b"\n\n" + alpaca(2) + b"\n" + b'{"partial')
    await ingest.stdin.drain()

    async def sent() -> bool:
        topics = [names["items.raw"], names["items.dlq"]]
        return len(await read_to_end(config.kafka, broker, topics)) == 3

    await wait_until(sent, timeout_s=30, interval_s=0.2)  # read and sent, stdin still open
    ingest.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(ingest.communicate(), timeout=30)
    assert ingest.returncode == 0, err.decode()
    assert "ingested 3 records (1 invalid" in out.decode()

    raw = await read_to_end(config.kafka, broker, [names["items.raw"]])
    assert sorted(r.key for r in raw) == [b"item-1", b"item-2"]
    dlq = await read_to_end(config.kafka, broker, [names["items.dlq"]])
    assert len(dlq) == 1 and len(dlq[0].value) == 64 * 1024
    meta = headers_dict(dlq[0].headers)
    assert meta["reason"] == "too_large" and meta["ingest.line"] == "2"
    assert f"record is {len(huge)} bytes" in meta["message"]


async def test_stdin_redirected_from_a_file_is_read_too(broker: str, tmp_path: Path) -> None:
    """`ingest - < file` (no pipe) reads the file to its end."""
    config = unique_config()
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(alpaca(i) + b"\n" for i in range(5)))
    with source.open("rb") as stdin:
        ingest = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "iterrefine.cli", "ingest", "-", "--bootstrap", broker,
            "--topic-prefix", config.kafka.topic_prefix, stdin=stdin,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        )
        out, err = await asyncio.wait_for(ingest.communicate(), timeout=30)
    assert ingest.returncode == 0, err.decode()
    assert "ingested 5 records (0 invalid" in out.decode()


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.mark.unit
async def test_chunked_lines_split_cut_and_number_lines() -> None:
    """Lines across chunk borders join; blank lines count; long lines keep head and size."""
    lines = [r async for r in chunked_lines(
        _chunks(b'{"a":', b'1}\n\n  \nxxxxxxxxxx', b"xxxxx\n", b"last", b""), "s",
        max_line_bytes=8)]
    assert [(r.data, r.line, r.size) for r in lines] == [
        (b'{"a":1}', 1, None), (b"xxxxxxxx", 4, 15), (b"last", 5, None)]
    assert lines[1].length == 15
    stopped = [r async for r in chunked_lines(_chunks(b"one\ntw"), "s", max_line_bytes=8)]
    assert [r.data for r in stopped] == [b"one"]  # no end marker: the partial line is dropped
