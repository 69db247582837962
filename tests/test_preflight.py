"""Fail early and honestly: preflight checks, strict flags and config, exit codes."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from pathlib import Path

import msgspec
import pytest

from iterrefine.app._preflight import PreflightError, check_output_paths
from iterrefine.app.exit_codes import CUT_SHORT, DEAD_LETTERED, OK, USAGE, run_exit_code
from iterrefine.app.run import RunOptions, run_pipeline, sim_roles
from iterrefine.config import load_config
from iterrefine.errors import ConfigError
from iterrefine.sim import SimConfig, SimServer

from .helpers import unique_config, wait_until
from .pipeline_support import sample_records, write_jsonl

SAMPLE = Path(__file__).parent.parent / "examples" / "dolly_sample.jsonl"
KEY_ENV = "ITERREFINE_PREFLIGHT_TEST_KEY"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def cli(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, float]:
    """``iterrefine ARGV`` in a child process: exit code, stderr, seconds."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "iterrefine.cli", *argv,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode(), time.monotonic() - started


@pytest.mark.unit
def test_output_paths_are_checked_before_anything_runs(tmp_path: Path) -> None:
    """A directory, a path under a file, and a read-only directory fail; a new dir is made."""
    with pytest.raises(PreflightError, match="is a directory"):
        check_output_paths([tmp_path])
    with pytest.raises(PreflightError, match="/dev/null is not a directory"):
        check_output_paths([Path("/dev/null/c.jsonl")])
    check_output_paths([tmp_path / "new" / "deeper" / "out.jsonl"])
    assert (tmp_path / "new" / "deeper").is_dir()
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(PreflightError, match="cannot write"):
            check_output_paths([locked / "out.jsonl"])


@pytest.mark.unit
def test_unknown_config_keys_are_errors(tmp_path: Path) -> None:
    """`max_round = 1` (a typo of max_rounds) is rejected instead of silently ignored."""
    path = tmp_path / "c.toml"
    path.write_text("[pipeline]\nmax_round = 1\n")
    with pytest.raises(ConfigError, match="max_round"):
        load_config(path)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("summary", "invalid", "code"),
    [
        ({"complete": True, "dlq": 0, "curated": 5, "rejected": 1, "items_in": 6}, 0, OK),
        ({"complete": True, "dlq": 2, "curated": 5, "rejected": 1, "items_in": 8}, 2, OK),
        ({"complete": True, "dlq": 1, "curated": 5, "rejected": 0, "items_in": 6}, 0,
         DEAD_LETTERED),
        ({"complete": True, "dlq": 3, "curated": 0, "rejected": 0, "items_in": 3}, 3,
         DEAD_LETTERED),
        ({"complete": False, "dlq": 0, "curated": 1, "rejected": 0, "items_in": 6}, 0, CUT_SHORT),
        ({"complete": False, "dlq": 0, "curated": 1, "rejected": 0, "items_in": 6,
          "aborted": "key"}, 0, USAGE),
    ],
)
def test_exit_codes(summary: dict[str, object], invalid: int, code: int) -> None:
    """0 only when nothing was dead-lettered for a processing reason; all-DLQ is never 0."""
    assert run_exit_code(summary, invalid_input=invalid) == code


async def test_flags_are_never_abbreviated_and_version_exists() -> None:
    """--max-round is an error (not --max-rounds); --version prints and exits 0."""
    code, err, _ = await cli("run", str(SAMPLE), "-o", "x.jsonl", "--llm", "sim",
                             "--max-round", "1")
    assert code == 2 and "--max-round" in err
    code, _, _ = await cli("--version")
    assert code == 0


async def test_closed_port_fails_in_seconds_before_ingesting(tmp_path: Path) -> None:
    """An LLM base URL nobody listens on: exit 2 within 10 s, the fix named, no output."""
    out = tmp_path / "out.jsonl"
    code, err, seconds = await cli(
        "run", str(SAMPLE), "-o", str(out), "--llm-base-url",
        f"http://127.0.0.1:{closed_port()}/v1", "--strong-model", "a", "--backbone-model", "b",
        "--data-dir", str(tmp_path / "d"), "--no-progress", "--log-level", "error")
    assert code == 2 and seconds < 10
    assert "check base_url and that the server is running" in err
    assert not out.exists()


async def test_wrong_key_fails_before_ingesting(tmp_path: Path) -> None:
    """A key the endpoint rejects: exit 2 naming api_key_env; only the probes were sent."""
    async with SimServer(SimConfig(api_key="right"), port=0) as sim:
        code, err, seconds = await cli(
            "run", str(SAMPLE), "-o", str(tmp_path / "out.jsonl"), "--llm-base-url",
            sim.base_url, "--strong-model", "sim-strong", "--backbone-model", "sim-backbone",
            "--api-key-env", KEY_ENV, "--data-dir", str(tmp_path / "d"), "--no-progress",
            "--log-level", "error", env={KEY_ENV: "wrong"})
        requests = sim.stats.total
    assert code == 2 and seconds < 10
    assert f"${KEY_ENV} must hold a valid key" in err
    assert requests == 2  # one probe per role, no chat call


async def test_key_rejected_mid_run_stops_the_run_without_dead_letters(
    broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The endpoint starts refusing the key mid-run: the run stops, aborted, 0 in the DLQ."""
    monkeypatch.setenv(KEY_ENV, "right")
    fast = SimConfig(latency_ms=20, capacity=64, api_key="right")
    async with SimServer(fast, port=0) as sim:
        base = unique_config()
        config = sim_roles(msgspec.structs.replace(
            base, kafka=msgspec.structs.replace(base.kafka, bootstrap_servers=broker)),
            sim.base_url, fast)
        config = msgspec.structs.replace(config, llm={
            role: msgspec.structs.replace(c, api_key_env=KEY_ENV)
            for role, c in config.llm.items()})
        source = write_jsonl(tmp_path / "in.jsonl", sample_records(60))
        run = asyncio.create_task(run_pipeline(config, RunOptions(
            input=source, output=tmp_path / "out.jsonl", timeout_s=60)))
        await wait_until(lambda: sim.stats.total >= 40, interval_s=0.01)
        sim.config = msgspec.structs.replace(sim.config, api_key="rotated")
        result = await run
    assert result.summary["aborted"] and "api_key_env" in result.summary["aborted"]
    assert result.summary["dlq"] == 0 and not result.complete


class _SlowModels:
    """An OpenAI-compatible server that takes connections but answers /v1/models late,
    like a single-slot llama.cpp server busy generating."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    async def __aenter__(self) -> str:
        from aiohttp import web

        async def models(request: web.Request) -> web.Response:
            await asyncio.sleep(self.delay_s)
            return web.json_response({"object": "list", "data": [{"id": "m"}]})

        app = web.Application()
        app.router.add_get("/v1/models", models)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}/v1"

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()


@pytest.mark.unit
async def test_preflight_waits_for_a_busy_server_and_refuses_a_dead_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server slow to answer (busy) is waited for up to preflight_wait_s; one that stays
    silent longer fails naming the setting; a closed port fails at once."""
    from iterrefine.app import _preflight
    from iterrefine.app._preflight import check_llm_roles
    from iterrefine.config import LLMRoleConfig
    from iterrefine.llm import LLMClient

    monkeypatch.setattr(_preflight, "PROBE_TIMEOUT_S", 0.2)
    async with _SlowModels(delay_s=0.8) as base_url:
        patient = LLMRoleConfig(base_url=base_url, model="m", preflight_wait_s=5.0)
        async with LLMClient("strong", patient) as client:
            await check_llm_roles([client])  # waited, no error
        hasty = LLMRoleConfig(base_url=base_url, model="m", preflight_wait_s=0.1)
        async with LLMClient("strong", hasty) as client:
            with pytest.raises(PreflightError, match="raise preflight_wait_s"):
                await check_llm_roles([client])
    closed = LLMRoleConfig(base_url=base_url, model="m", preflight_wait_s=60.0)
    started = time.monotonic()
    async with LLMClient("strong", closed) as client:
        with pytest.raises(PreflightError):
            await check_llm_roles([client])
    assert time.monotonic() - started < 10
