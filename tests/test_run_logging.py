"""Logs of real pipeline runs: work context on every event, and no API key anywhere."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
import structlog

from iterrefine.app.run import RunOptions, RunResult, run_pipeline, sim_roles
from iterrefine.config import PipelineConfig
from iterrefine.io.export import load_rows
from iterrefine.observe.logging import configure_logging
from iterrefine.sim import SimConfig, SimServer

from .helpers import unique_config

# Many 429s and unreadable answers, and clients that retry a 429 once only, so that
# one short run logs LLM retries, handler retries, unparseable answers, handler
# failures and dead letters.
NOISY_SIM = SimConfig(latency_ms=3, capacity=64, low_share=0.6, lose_prob=0.5,
                      fault_429=0.25, fault_malformed=0.15, retry_after_s=0.02, seed=5)
MALFORMED_LINES = ["{not json", json.dumps({"prompt": "x", "completion": "y"})]
STAGE_INPUT = {"score": "items.raw", "route": "items.scored", "refine": "items.refine",
               "review": "items.review", "align": "items.align"}
WORK_KEYS = ("item_id", "stage", "round", "topic", "partition", "offset")
UNIT_OF_WORK_EVENTS = (
    "handler_retry", "handler_failed", "dead_lettered", "llm_retry", "llm_answer_unparseable",
)
PLANTED_SK_KEY = "sk-test-PLANTED-123"
# Not shaped like any known provider key, so only keeping it out of logs (not the
# value pattern of the redactor) can pass.
PLANTED_PLAIN_KEY = "PLANTEDplainK3y9f8e7d"


def _records(n: int) -> list[str]:
    return [
        json.dumps({"id": f"log-{i}", "instruction": f"Name {i} uses of a paperclip.",
                    "input": "", "output": f"{i}: holding paper, a hook, a reset pin."})
        for i in range(n)
    ]


class LoggedRun(msgspec.Struct):
    events: list[dict[str, Any]]
    result: RunResult


@pytest.fixture(scope="module")
async def logged_run(broker: str, tmp_path_factory: pytest.TempPathFactory) -> LoggedRun:
    """A short noisy run, every log line captured as rendered JSON."""
    tmp_path = tmp_path_factory.mktemp("logged_run")
    source = tmp_path / "input.jsonl"
    source.write_text("\n".join([*_records(30), *MALFORMED_LINES]) + "\n")
    out = io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    configure_logging(json=True, level="debug", stream=out)
    try:
        async with SimServer(NOISY_SIM, port=0) as sim:
            base = unique_config(retry_base_s=0.01, retry_max_s=0.05, retry_max_attempts=8)
            config = sim_roles(msgspec.structs.replace(
                base, kafka=msgspec.structs.replace(base.kafka, bootstrap_servers=broker),
                pipeline=PipelineConfig(parse_retries=0),
            ), sim.base_url, NOISY_SIM)
            config = msgspec.structs.replace(config, llm={
                role: msgspec.structs.replace(c, max_retries=1) for role, c in config.llm.items()
            })
            result = await run_pipeline(config, RunOptions(
                input=source, output=tmp_path / "out.jsonl", timeout_s=60))
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)
    events = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    return LoggedRun(events=events, result=result)


def test_unit_of_work_events_carry_item_stage_round_and_record(logged_run: LoggedRun) -> None:
    """Retries, failures, unparseable answers and dead letters name the item and its record."""
    assert logged_run.result.complete
    seen = {e["event"] for e in logged_run.events}
    # handler_retry may not occur: LLM failures are retried by the client alone (one layer).
    expected = set(UNIT_OF_WORK_EVENTS) - {"handler_retry"}
    assert expected <= seen, expected - seen
    for event in logged_run.events:
        if event["event"] not in UNIT_OF_WORK_EVENTS:
            continue
        keys = WORK_KEYS
        if event["event"] == "dead_lettered" and event["reason"] in ("not_json", "unknown_shape"):
            keys = tuple(k for k in WORK_KEYS if k != "round")  # never decoded: no round
        missing = [k for k in keys if event.get(k) in (None, "")]
        assert not missing, (missing, event)
        assert event["topic"].endswith(STAGE_INPUT[event["stage"]]), event
        assert isinstance(event["partition"], int) and isinstance(event["offset"], int)


def test_every_event_with_a_record_offset_names_its_stage_and_topic(logged_run: LoggedRun) -> None:
    """Whatever logs inside a unit of work gets the record coordinates from the context."""
    inside = [e for e in logged_run.events if "offset" in e]
    assert len(inside) >= 10
    for event in inside:
        assert {"stage", "topic", "partition", "item_id"} <= event.keys(), event


def test_undecodable_records_are_dead_lettered_with_their_coordinates(
    logged_run: LoggedRun,
) -> None:
    """A record that never became an item is logged with topic/partition/offset and its DLQ id."""
    decode_failures = [
        e for e in logged_run.events
        if e["event"] == "dead_lettered" and e["reason"] in ("not_json", "unknown_shape")
    ]
    assert sorted(e["reason"] for e in decode_failures) == ["not_json", "unknown_shape"]
    dlq_ids = {row["id"] for row in load_rows(logged_run.result.paths.dlq)}
    for event in decode_failures:
        assert event["stage"] == "score"
        assert event["topic"].endswith("items.raw")
        assert event["item_id"] in dlq_ids


@pytest.fixture
def sim_config() -> SimConfig:
    return NOISY_SIM


@pytest.mark.slow
async def test_planted_api_keys_never_reach_the_output(
    broker: str, sim: SimServer, tmp_path: Path
) -> None:
    """`iterrefine run --log-level debug` logs debug events, and with keys in the
    environment prints neither key."""
    source = tmp_path / "input.jsonl"
    source.write_text("\n".join([*_records(12), *MALFORMED_LINES]) + "\n")
    config = tmp_path / "iterrefine.toml"
    config.write_text(
        f'[kafka]\nbootstrap_servers = "{broker}"\ntopic_prefix = "k{uuid.uuid4().hex[:8]}."\n'
        "[runtime]\ncommit_interval_ms = 200\nsession_timeout_ms = 3000\n"
        "heartbeat_interval_ms = 500\nretry_base_s = 0.01\nretry_max_s = 0.05\n"
        "[llm.strong]\n"
        f'base_url = "{sim.base_url}"\nmodel = "sim-strong"\napi_key_env = "TEST_STRONG_KEY"\n'
        "max_retries = 1\n"
        "[llm.backbone]\n"
        f'base_url = "{sim.base_url}"\nmodel = "sim-backbone"\n'
        'api_key_env = "TEST_BACKBONE_KEY"\nmax_retries = 1\n'
    )
    env = {**os.environ, "TEST_STRONG_KEY": PLANTED_SK_KEY,
           "TEST_BACKBONE_KEY": PLANTED_PLAIN_KEY}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "iterrefine.cli", "run", str(source),
        "-o", str(tmp_path / "out.jsonl"), "--config", str(config),
        "--log-level", "debug", "--no-progress", "--timeout-s", "60",
        # Fresh answers every time: cached ones would skip the faults this run must log.
        "--no-cache",
        env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    output = stdout.decode() + stderr.decode()
    # 1: the noisy simulator makes some items end in the DLQ, which run reports honestly.
    assert process.returncode in (0, 1), output[-3000:]
    # The run did log, in JSON lines (stderr is no TTY), including LLM retries.
    events = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    assert any(e["event"] == "llm_retry" for e in events)
    # Debug means debug: each request, each handled item (with its unit of work), each record.
    debug = [e for e in events if e["level"] == "debug"]
    assert {"llm_request", "item_handled", "record_ingested"} <= {e["event"] for e in debug}
    assert all(e.get("item_id") and e.get("stage") for e in debug if e["event"] == "item_handled")
    assert sim.requests.recent(task="score"), "the run used the simulator"
    for key in (PLANTED_SK_KEY, PLANTED_PLAIN_KEY, "PLANTED"):
        assert key not in output
    assert "PLANTED" not in _read_outputs(tmp_path)


def _read_outputs(directory: Path) -> str:
    return "".join(path.read_text() for path in directory.glob("out*.jsonl"))
