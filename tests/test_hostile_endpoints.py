"""`iterrefine run` against endpoints that lie, mislead or fail: provenance, names, outages."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from iterrefine.app._preflight import PreflightError
from iterrefine.config import LLMRoleConfig
from iterrefine.io.export import load_rows
from iterrefine.llm import LLMClient
from iterrefine.sim import SimConfig, SimServer

from .pipeline_support import sample_records, write_jsonl

ROOT = Path(__file__).parent.parent


async def cli(*argv: str, cwd: Path = ROOT) -> tuple[int, str, str]:
    """``iterrefine ARGV`` in a child process (the test's own loop keeps serving)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "iterrefine.cli", *argv, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=240)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def run_args(source: Path, out: Path, base_url: str, broker: str, data_dir: Path,
             *extra: str) -> list[str]:
    return ["run", str(source), "-o", str(out), "--llm-base-url", base_url,
            "--strong-model", "sim-strong", "--backbone-model", "sim-backbone",
            "--bootstrap", broker, "--topic-prefix", f"t{uuid.uuid4().hex[:10]}.",
            "--data-dir", str(data_dir), "--summary", str(out.with_suffix(".summary.json")),
            "--no-progress", "--log-level", "error", "--timeout-s", "120", *extra]


async def test_a_separately_started_simulator_is_named_by_its_answers(
    broker: str, tmp_path: Path,
) -> None:
    """`run --llm-base-url <a sim-llm>`: every row, the summary and the title say SIMULATED,
    because the answers themselves say so (not because run started the simulator)."""
    source = write_jsonl(tmp_path / "in.jsonl", sample_records(12))
    out = tmp_path / "out.jsonl"
    async with SimServer(SimConfig(latency_ms=2), port=0) as sim:
        code, stdout, stderr = await cli(*run_args(source, out, sim.base_url, broker,
                                                   tmp_path / "d"))
    assert code == 0, stderr[-3000:]
    rows = load_rows(out) + load_rows(out.with_name("out.rejected.jsonl"))
    assert len(rows) == 12
    assert all(row["item"]["provenance"]["simulated"] is True for row in rows)
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["simulated"] is True
    assert "SIMULATED LLM" in stdout


class Busy:
    """An endpoint that answers 503 to everything, and counts what it was asked."""

    def __init__(self) -> None:
        self.requests = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.json_response({"error": {"message": "overloaded"}}, status=503)


@asynccontextmanager
async def busy_endpoint(port: int) -> AsyncIterator[Busy]:
    busy = Busy()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", busy.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    try:
        yield busy
    finally:
        await runner.cleanup()


async def test_a_fully_cached_rerun_finishes_while_the_endpoint_answers_503(
    broker: str, tmp_path: Path,
) -> None:
    """Second run of the same input, every answer cached, the endpoint now 503 on every
    route: exit 0, the same curated rows, and no chat call reached the endpoint."""
    source = write_jsonl(tmp_path / "in.jsonl", sample_records(10))
    data_dir = tmp_path / "d"
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    async with SimServer(SimConfig(latency_ms=2), port=0) as sim:
        port, base_url = sim.port, sim.base_url
        code, _, stderr = await cli(*run_args(source, first, base_url, broker, data_dir))
    assert code == 0, stderr[-3000:]
    started = time.monotonic()
    async with busy_endpoint(port) as busy:
        code, _, stderr = await cli(*run_args(source, second, base_url, broker, data_dir,
                                              "--log-level", "warning"))
    assert code == 0, stderr[-3000:]
    assert "preflight_endpoint_busy" in stderr
    assert time.monotonic() - started < 60
    assert busy.requests == 2  # one probe per role, no chat call
    summary = json.loads(second.with_suffix(".summary.json").read_text())
    assert sum(role["requests"] for role in summary["llm"].values()) == 0
    assert summary["simulated"] is True  # the cached answers remember who gave them
    assert sorted(r["id"] for r in load_rows(second)) == sorted(r["id"] for r in load_rows(first))


async def test_a_mistyped_model_stops_the_run_at_start_naming_role_and_model(
    tmp_path: Path,
) -> None:
    """A model name the server does not serve: exit 2 in seconds, naming the role and the
    model, nothing ingested (not every item dead-lettered as llm_error)."""
    source = write_jsonl(tmp_path / "in.jsonl", sample_records(20))
    out = tmp_path / "out.jsonl"
    async with SimServer(SimConfig(strict_models=True), port=0) as sim:
        started = time.monotonic()
        code, _, stderr = await cli(
            "run", str(source), "-o", str(out), "--llm-base-url", sim.base_url,
            "--strong-model", "sim-strnog", "--backbone-model", "sim-backbone",
            "--data-dir", str(tmp_path / "d"), "--no-progress", "--log-level", "error")
        answered, refused = sim.stats.total, sim.stats.by_status["404"]
    assert code == 2, stderr[-3000:]
    assert time.monotonic() - started < 30
    assert "'strong'" in stderr and "'sim-strnog'" in stderr and "--strong-model" in stderr
    assert "'backbone'" not in stderr
    assert (answered, refused) == (0, 1)  # the one-token check of the unlisted name
    assert not out.exists()


def _role(base_url: str, model: str) -> LLMRoleConfig:
    return LLMRoleConfig(base_url=base_url, model=model, structured_output="off")


@pytest.mark.unit
async def test_models_served_checks_the_list_then_one_token() -> None:
    """A listed name costs no call; an unlisted one is asked once: refused → PreflightError
    naming the role and model; accepted (a server answering any name) → fine."""
    from iterrefine.app._preflight import check_models_served

    async with (
        SimServer(SimConfig(strict_models=True), port=0) as strict,
        SimServer(SimConfig(), port=0) as lenient,
        LLMClient("strong", _role(strict.base_url, "sim-strong")) as listed,
        LLMClient("backbone", _role(strict.base_url, "gpt-typo")) as typo,
        LLMClient("backbone", _role(lenient.base_url, "any-alias")) as alias,
    ):
        await check_models_served([listed, alias])
        assert strict.stats.by_status == {} and lenient.stats.total == 1
        with pytest.raises(PreflightError) as caught:
            await check_models_served([listed, typo])
    assert "'backbone'" in str(caught.value) and "'gpt-typo'" in str(caught.value)
    assert "'strong'" not in str(caught.value)


@pytest.mark.unit
async def test_items_are_stamped_by_what_answered_them() -> None:
    """A context not told it runs on the simulator still stamps an item simulated once a
    role's answer carried the simulator's fingerprint; answers without it leave it real."""
    import httpx2
    from prometheus_client import CollectorRegistry

    from iterrefine.app.pipeline import pipeline_context
    from iterrefine.config import Config
    from iterrefine.item.records import item_from_raw
    from iterrefine.observe.metrics import Metrics

    def real(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json={"model": "gpt", "system_fingerprint": "fp_1",
                                          "choices": [{"message": {"content": "hi"}}]})

    item = item_from_raw(b'{"instruction": "Say hi.", "output": "hi"}')
    messages = [{"role": "user", "content": "Say hi."}]
    async with (
        SimServer(SimConfig(), port=0) as sim,
        httpx2.AsyncClient(transport=httpx2.MockTransport(real)) as http,
        LLMClient("strong", _role("http://real.test/v1", "gpt"), http_client=http) as strong,
        LLMClient("backbone", _role(sim.base_url, "sim-backbone")) as backbone,
    ):
        roles = {"strong": strong, "backbone": backbone}
        config = Config(llm={name: client.config for name, client in roles.items()})
        ctx = pipeline_context(config, roles, Metrics(CollectorRegistry()), simulated=False)
        await strong.chat(messages)
        assert ctx.stamp(item).provenance.simulated is False
        await backbone.chat(messages)
        assert ctx.stamp(item).provenance.simulated is True
