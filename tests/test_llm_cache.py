"""The LLM response cache: content-addressed, readable answers only, shared by processes."""

from __future__ import annotations

import multiprocessing
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
import pytest
from prometheus_client import CollectorRegistry

from iterrefine.config import CacheConfig, Config, LLMRoleConfig
from iterrefine.llm import LLMClient, LLMRoles
from iterrefine.llm.cache import CachedAnswer, ResponseCache, clear, read_stats
from iterrefine.observe.metrics import Metrics
from iterrefine.sim import SimConfig, SimServer
from iterrefine.tasks.ask import ask_score
from iterrefine.tasks.prompts import build_messages

GOOD_SCORE = (
    "Usable: yes\nReason: clear.\nCorrectness: 8\nCompleteness: 7\nClarity: 9\n"
    "Compliance: 8\nReasoning: 7\nVerdict: high\nJustification: fine."
)
ITEM = {"instruction": "Name a colour.", "input": "", "output": "Blue."}


def answer(text: str = "hi") -> CachedAnswer:
    return CachedAnswer(text=text, model="m", prompt_tokens=10, completion_tokens=2)


@pytest.mark.unit
def test_put_get_delete_and_lifetime_counters(tmp_path: Path) -> None:
    """A stored answer comes back; a missing one is a miss; counters add up across handles."""
    path = tmp_path / "c.sqlite3"
    cache = ResponseCache(path)
    assert cache.get("k") is None
    cache.put("k", answer())
    assert cache.get("k") == answer()
    cache.delete("k")
    assert cache.get("k") is None
    cache.close()
    second = ResponseCache(path)
    second.put("j", answer())
    assert second.get("j") is not None
    second.close()
    stats = read_stats(path)
    assert stats is not None
    assert (stats.entries, stats.hits, stats.misses, stats.tokens_saved) == (1, 2, 2, 24)
    assert clear(path) == 1
    stats = read_stats(path)
    assert stats is not None and (stats.entries, stats.hits) == (0, 0)


@pytest.mark.unit
def test_a_running_process_adds_its_counters_every_few_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long-running worker's hits reach the file while it runs (status reads them),
    not only when it closes."""
    import iterrefine.llm.cache as cache_module

    path = tmp_path / "c.sqlite3"
    worker = ResponseCache(path)
    worker.put("k", answer())
    assert worker.get("k") is not None
    assert worker.get("k") is not None
    stats = read_stats(path)
    assert stats is not None and stats.hits == 0  # inside the interval: still pending
    monkeypatch.setattr(cache_module, "FLUSH_INTERVAL_S", 0.0)
    assert worker.get("nope") is None  # the next lookup flushes what was pending
    stats = read_stats(path)
    assert stats is not None and (stats.hits, stats.misses) == (2, 0)
    worker.close()
    stats = read_stats(path)
    assert stats is not None and (stats.hits, stats.misses) == (2, 1)


@pytest.mark.unit
def test_refresh_mode_never_reads_but_writes(tmp_path: Path) -> None:
    """--cache refresh asks again (every lookup misses) and overwrites what it gets."""
    path = tmp_path / "c.sqlite3"
    with_cache = ResponseCache(path)
    with_cache.put("k", answer("old"))
    with_cache.close()
    refresh = ResponseCache(path, mode="refresh")
    assert refresh.get("k") is None
    refresh.put("k", answer("new"))
    refresh.close()
    again = ResponseCache(path)
    hit = again.get("k")
    again.close()
    assert hit is not None and hit.text == "new"


def _writer(path: str, start: int) -> None:
    cache = ResponseCache(path)
    for n in range(start, start + 200):
        cache.put(f"key-{n}", answer(str(n)))
    cache.close()


def test_several_processes_write_one_file(tmp_path: Path) -> None:
    """Four processes writing at once lose nothing (WAL + busy timeout)."""
    path = str(tmp_path / "c.sqlite3")
    ResponseCache(path).close()  # create the schema once, as the first run would
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_writer, args=(path, n * 200)) for n in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    stats = read_stats(path)
    assert stats is not None and stats.entries == 800


def role(base_url: str, **overrides: object) -> LLMRoleConfig:
    # Free text: "auto" would add its one dialect probe to the request counts.
    overrides = {"structured_output": "off", **overrides}
    return LLMRoleConfig(base_url=base_url, model="strong", max_retries=0,
                         **overrides)  # type: ignore[arg-type]


@pytest.mark.unit
async def test_second_identical_ask_is_answered_from_disk(tmp_path: Path) -> None:
    """The same task on the same item twice: one request, a hit, tokens saved in metrics."""
    metrics = Metrics(CollectorRegistry())
    async with SimServer(SimConfig(), port=0) as sim:
        for _ in range(2):
            cache = ResponseCache(tmp_path / "c.sqlite3")
            async with LLMClient("strong", role(sim.base_url), metrics=metrics,
                                 cache=cache) as client:
                first = await ask_score(client, **ITEM)
            cache.close()
        assert sim.stats.total == 1
    assert isinstance(first.usable, bool)
    stats = client.stats()
    assert (stats.cache_hits, stats.cache_misses, stats.requests) == (1, 0, 0)
    labels = {"role": "strong", "result": "hit"}
    assert metrics.registry.get_sample_value("iterrefine_llm_cache_total", labels) == 1
    saved = metrics.registry.get_sample_value(
        "iterrefine_llm_cache_tokens_saved_total", {"role": "strong"})
    assert saved is not None and saved > 0


@asynccontextmanager
async def scripted(tmp_path: Path, *texts: str) -> AsyncIterator[tuple[LLMClient, list[bytes]]]:
    """A client on a cache whose endpoint answers ``texts`` in turn (last one repeats)."""
    seen: list[bytes] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.content)
        text = texts[min(len(seen), len(texts)) - 1]
        return httpx2.Response(200, json={
            "model": "strong", "choices": [{"message": {"content": text}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5}})

    cache = ResponseCache(tmp_path / "c.sqlite3")
    async with (
        httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) as http,
        LLMClient("strong", role("http://llm.test/v1"), http_client=http, cache=cache) as client,
    ):
        yield client, seen
    cache.close()


@pytest.mark.unit
async def test_unreadable_answers_are_never_cached(tmp_path: Path) -> None:
    """An answer the parser rejects is not stored: only the readable re-ask answer is."""
    async with scripted(tmp_path, "gibberish", GOOD_SCORE) as (client, seen):
        await ask_score(client, **ITEM)
        assert len(seen) == 2
    stats = read_stats(tmp_path / "c.sqlite3")
    assert stats is not None and stats.entries == 1
    # Asked again: the first question (never answered readably) is paid again, the re-ask
    # is answered from disk.
    async with scripted(tmp_path, "gibberish", GOOD_SCORE) as (client, seen):
        await ask_score(client, **ITEM)
        assert len(seen) == 1 and client.stats().cache_hits == 1


@pytest.mark.unit
async def test_key_ignores_the_fence_nonce_but_not_the_question(tmp_path: Path) -> None:
    """Two renderings of one question (different nonces) share a key; another item does not."""
    async with scripted(tmp_path, "an answer") as (client, seen):
        for nonce in ("0123abcd", "89abcdef"):
            reply = await client.chat(build_messages("score", ITEM, nonce=nonce))
            client.remember(reply, readable=True)
        other = await client.chat(build_messages("score", {**ITEM, "output": "Red."}))
        assert len(seen) == 2 and not other.cached


@pytest.mark.unit
async def test_roles_share_one_cache_and_off_means_none(tmp_path: Path) -> None:
    """LLMRoles opens the cache file from config (on) and opens nothing when it is off."""
    llm = {"strong": role("http://llm.test/v1")}
    path = tmp_path / "x" / "answers.sqlite3"
    config = Config(llm=llm, cache=CacheConfig(mode="on", path=str(path)))
    async with LLMRoles(config) as roles:
        assert roles.cache is not None and roles.cache.path == path
    assert path.exists()
    async with LLMRoles(Config(llm=llm, data_dir=str(tmp_path / "y"))) as roles:
        assert roles.cache is None
    assert not (tmp_path / "y").exists()


@pytest.mark.unit
def test_cli_cache_flags_and_defaults(tmp_path: Path) -> None:
    """run defaults to the cache on; --no-cache and --cache refresh override; TOML can turn
    it off; commands that call no LLM have none."""
    from iterrefine.cli import build_parser
    from iterrefine.cli.common import config_from_args

    parser = build_parser()
    base = ["run", "in.jsonl", "-o", "out.jsonl"]
    off = tmp_path / "off.toml"
    off.write_text('[cache]\nmode = "off"\n')
    cases = {
        (): "on", ("--no-cache",): "off", ("--cache", "refresh"): "refresh",
        ("--config", str(off)): "off",
    }
    for extra, mode in cases.items():
        assert config_from_args(parser.parse_args([*base, *extra])).cache.mode == mode
    assert config_from_args(parser.parse_args(["status"])).cache.mode == "off"


def test_cli_cache_stats_and_clear(tmp_path: Path) -> None:
    """`iterrefine cache stats --json` reports entries; `cache clear` empties the file."""
    import json
    import subprocess
    import sys

    data_dir = tmp_path / "d"
    cache = ResponseCache(data_dir / "llm-cache.sqlite3")
    cache.put("k", answer())
    cache.close()

    def cli(*argv: str) -> str:
        done = subprocess.run([sys.executable, "-m", "iterrefine.cli", "cache", *argv,
                               "--data-dir", str(data_dir)], capture_output=True, text=True,
                              check=True, timeout=60)
        return done.stdout

    assert json.loads(cli("stats", "--json"))["entries"] == 1
    assert "deleted 1" in cli("clear")
    assert json.loads(cli("stats", "--json"))["entries"] == 0


@pytest.mark.unit
async def test_an_unwritable_cache_path_runs_without_cache(tmp_path: Path) -> None:
    """A read-only place for the cache (k8s root filesystem) warns and runs uncached."""
    from structlog.testing import capture_logs

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = Config(llm={"strong": role("http://llm.test/v1")},
                    cache=CacheConfig(mode="on", path=str(blocker / "c.sqlite3")))
    with capture_logs() as logs:
        async with LLMRoles(config) as roles:
            assert roles.cache is None
    assert any(e["event"] == "llm_cache_unavailable" for e in logs)
