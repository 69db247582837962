"""The response cache as an attacker and bad luck meet it: keys, seals, damaged files, outages."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx2
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from iterrefine.config import CacheConfig, Config, LLMRoleConfig
from iterrefine.llm import LLMClient, LLMRoles
from iterrefine.llm.cache import CachedAnswer, ResponseCache, read_stats
from iterrefine.observe.metrics import Metrics
from iterrefine.sim import SimConfig, SimServer
from iterrefine.tasks.ask import ask_score

pytestmark = pytest.mark.unit

ITEM = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
GOOD_SCORE = (
    "Usable: yes\nReason: clear.\nCorrectness: 8\nCompleteness: 7\nClarity: 9\n"
    "Compliance: 8\nReasoning: 7\nVerdict: high\nJustification: fine."
)


def role(base_url: str, **overrides: object) -> LLMRoleConfig:
    settings: dict[str, object] = {"structured_output": "off", "max_retries": 0, **overrides}
    return LLMRoleConfig(base_url=base_url, model="strong", **settings)  # type: ignore[arg-type]


def answer(text: str = "hi") -> CachedAnswer:
    return CachedAnswer(text=text, model="m", prompt_tokens=10, completion_tokens=2)


async def test_the_key_tells_endpoints_apart(tmp_path: Path) -> None:
    """The same question to another endpoint with the same model name is asked there,
    and its answer is marked by what answered it; a shared endpoint_identity shares."""
    path = tmp_path / "c.sqlite3"
    async with SimServer(SimConfig(), port=0) as first, SimServer(SimConfig(), port=0) as other:
        for base_url in (first.base_url, other.base_url):
            cache = ResponseCache(path)
            async with LLMClient("strong", role(base_url), cache=cache) as client:
                await ask_score(client, **ITEM)
            cache.close()
            assert client.answered_by_simulator and client.stats().simulated_answers == 1
        assert (first.stats.total, other.stats.total) == (1, 1)
        for base_url in (first.base_url, other.base_url):
            cache = ResponseCache(path)
            same = role(base_url, endpoint_identity="one-server")
            async with LLMClient("strong", same, cache=cache) as client:
                await ask_score(client, **ITEM)
            cache.close()
        assert first.stats.total + other.stats.total == 3  # the second was a hit


def _tamper(path: Path, sql: str, *params: object) -> None:
    db = sqlite3.connect(path)
    with db:
        db.execute(sql, params)
    db.close()


def test_an_edited_or_planted_entry_is_a_miss_counted_logged_and_deleted(
    tmp_path: Path,
) -> None:
    """An answer changed on disk, or a row planted without the secret, is never handed
    back: a miss, counted as rejected, logged as an error, and removed."""
    path = tmp_path / "c.sqlite3"
    cache = ResponseCache(path)
    cache.put("edited", answer("honest"))
    cache.put("kept", answer("untouched"))
    _tamper(path, "UPDATE sealed_answers SET text = ? WHERE key = ?", "planted", "edited")
    _tamper(path, "INSERT INTO sealed_answers VALUES ('new', 'm', 'evil', 1, 1, 'stop', 0, 0, ?)",
            b"\0" * 32)
    with capture_logs() as logs:
        assert cache.get("edited") is None
        assert cache.get("new") is None
        assert cache.get("kept") == answer("untouched")
    rejected = [e for e in logs if e["event"] == "llm_cache_entry_rejected"]
    assert [e["key"] for e in rejected] == ["edited", "new"]
    assert all(e["log_level"] == "error" for e in rejected)
    assert cache.rejected == 2
    cache.close()
    stats = read_stats(path)
    assert stats is not None and (stats.entries, stats.rejected, stats.hits) == (1, 2, 1)


def test_entries_sealed_under_another_secret_are_refused(tmp_path: Path) -> None:
    """A cache file copied without its key file (or a forged key) trusts nothing in it."""
    path = tmp_path / "c.sqlite3"
    cache = ResponseCache(path)
    cache.put("k", answer())
    cache.close()
    (tmp_path / "c.sqlite3.key").unlink()
    again = ResponseCache(path)
    assert again.get("k") is None and again.rejected == 1
    again.close()


def test_a_corrupt_file_is_quarantined_and_a_new_cache_used(tmp_path: Path) -> None:
    """A file SQLite cannot read is moved aside (kept for inspection, logged as an error)
    and the run gets a working cache instead of silently running uncached."""
    path = tmp_path / "llm-cache.sqlite3"
    garbage = b"SQLite format 3\x00" + bytes(range(256)) * 64
    path.write_bytes(garbage)
    config = Config(llm={"strong": role("http://llm.test/v1")},
                    cache=CacheConfig(mode="on", path=str(path)))
    with capture_logs() as logs:
        roles = LLMRoles(config)
    assert roles.cache is not None
    roles.cache.put("k", answer())
    assert roles.cache.get("k") == answer()
    roles.cache.close()
    aside = list(tmp_path.glob("llm-cache.sqlite3.corrupt-*"))
    assert [p.read_bytes() for p in aside if not p.name.endswith(("-wal", "-shm"))] == [garbage]
    assert any(e["event"] == "llm_cache_quarantined" and e["log_level"] == "error"
               for e in logs)


def test_a_page_damaged_inside_a_readable_file_is_caught_at_open(tmp_path: Path) -> None:
    """Damage past the header (quick_check) quarantines the file too."""
    path = tmp_path / "c.sqlite3"
    cache = ResponseCache(path)
    for n in range(300):
        cache.put(f"k{n}", answer("x" * 500))
    cache.close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = bytearray(path.read_bytes())
    page = 4096
    data[2 * page + 8: 2 * page + 300] = b"\xff" * 292  # inside a b-tree page
    path.write_bytes(bytes(data))
    with capture_logs() as logs:
        fresh = ResponseCache(path)
    fresh.put("k", answer())
    assert fresh.get("k") == answer()
    fresh.close()
    assert any(e["event"] == "llm_cache_quarantined" for e in logs)


async def test_a_fully_cached_ask_needs_no_endpoint(tmp_path: Path) -> None:
    """With every answer cached, asking again sends nothing, even while the endpoint
    answers 503 and the role's dialect is still to be probed (structured_output auto)."""
    sent: list[str] = []

    def healthy(request: httpx2.Request) -> httpx2.Response:
        sent.append("healthy")
        return httpx2.Response(200, json={
            "model": "strong", "system_fingerprint": "iterrefine-simulator",
            "choices": [{"message": {"content": GOOD_SCORE}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5}})

    def down(request: httpx2.Request) -> httpx2.Response:
        sent.append("down")
        return httpx2.Response(503, json={"error": {"message": "overloaded"}})

    metrics = Metrics(CollectorRegistry())
    replies = []
    for handler in (healthy, down):
        cache = ResponseCache(tmp_path / "c.sqlite3")
        async with (
            httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) as http,
            LLMClient("strong", role("http://llm.test/v1", structured_output="json_schema"),
                      http_client=http, cache=cache, metrics=metrics) as client,
        ):
            replies.append(await ask_score(client, **ITEM))
        cache.close()
    assert sent == ["healthy"]
    assert replies[0] == replies[1]
    assert client.stats().cache_hits == 1 and client.answered_by_simulator
    auto = ResponseCache(tmp_path / "c.sqlite3")
    async with (
        httpx2.AsyncClient(transport=httpx2.MockTransport(down)) as http,
        LLMClient("strong", role("http://llm.test/v1", structured_output="auto"),
                  http_client=http, cache=auto) as client,
    ):
        assert await ask_score(client, **ITEM) == replies[0]
    auto.close()
    assert sent == ["healthy"]
