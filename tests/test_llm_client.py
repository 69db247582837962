"""LLMClient / LLMRoles against httpx2.MockTransport handlers: no network, real openai client."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import httpx2
import pytest
import structlog
from prometheus_client import CollectorRegistry

import iterrefine.llm
from iterrefine.config import Config, LLMRoleConfig
from iterrefine.errors import ConfigError, LLMError, LLMRetriesExhausted, LLMTransientError
from iterrefine.llm import ChatResult, LLMClient, LLMRoles, TokenBucket
from iterrefine.llm._failures import parse_retry_after
from iterrefine.observe.metrics import Metrics
from iterrefine.retry import Backoff
from iterrefine.sim import SimConfig, SimServer
from iterrefine.tasks.prompts import build_messages

Handler = (
    Callable[[httpx2.Request], httpx2.Response]
    | Callable[[httpx2.Request], Coroutine[None, None, httpx2.Response]]
)
KEY_ENV = "ITERREFINE_TEST_LLM_KEY"
SECRET = "sk-test-5ecret-never-log-me-0123456789"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]


def completion(
    text: str = "hello", *, prompt_tokens: int = 12, completion_tokens: int = 5
) -> httpx2.Response:
    return httpx2.Response(
        200,
        json={
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": "served-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        },
    )


def error(status: int, message: str = "nope", **headers: str) -> httpx2.Response:
    return httpx2.Response(status, json={"error": {"message": message}}, headers=headers)


def sequence(*responses: httpx2.Response | Exception) -> tuple[Handler, list[float]]:
    """A handler answering with ``responses`` in turn; also returns request arrival times."""
    arrivals: list[float] = []
    pending = list(responses)

    def handler(request: httpx2.Request) -> httpx2.Response:
        arrivals.append(time.monotonic())
        item = pending.pop(0) if len(pending) > 1 else pending[0]
        if isinstance(item, Exception):
            raise item
        return item

    return handler, arrivals


def role_config(**overrides: Any) -> LLMRoleConfig:
    fields: dict[str, Any] = {
        "base_url": "http://llm.test/v1",
        "model": "test-model",
        "api_key_env": KEY_ENV,
        "max_retries": 3,
        "timeout_s": 5.0,
        # These tests pin one call's own failures; tests/test_llm_circuit.py pins the breaker.
        "circuit_failures": 0,
    }
    fields.update(overrides)
    return LLMRoleConfig(**fields)


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)


@asynccontextmanager
async def llm(
    handler: Handler, *, metrics: Metrics | None = None, **overrides: Any
) -> AsyncIterator[LLMClient]:
    async with (
        httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) as http,
        LLMClient(
            "strong",
            role_config(**overrides),
            metrics=metrics,
            http_client=http,
            backoff=Backoff(base_s=0.001, max_s=0.005),
        ) as client,
    ):
        yield client


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.mark.unit
async def test_chat_returns_text_and_counts_tokens() -> None:
    """A 200 gives the text, usage tokens, per-client stats and role-labelled metrics."""
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return completion("hello", prompt_tokens=12, completion_tokens=5)

    metrics = Metrics(CollectorRegistry())
    async with llm(handler, metrics=metrics) as client:
        result = await client.chat(MESSAGES, max_tokens=50)

    assert isinstance(result, ChatResult)
    assert (result.text, result.prompt_tokens, result.completion_tokens) == ("hello", 12, 5)
    assert result.model == "served-model" and result.finish_reason == "stop"
    assert result.attempts == 1 and result.seconds >= 0
    stats = client.stats()
    assert (stats.requests, stats.errors, stats.retries) == (1, 0, 0)
    assert (stats.prompt_tokens, stats.completion_tokens) == (12, 5)
    body = json.loads(seen[0].content)
    assert body["model"] == "test-model" and body["messages"] == MESSAGES
    assert body["max_tokens"] == 50 and body["temperature"] == 0.0
    assert seen[0].url == "http://llm.test/v1/chat/completions"
    assert seen[0].headers["authorization"] == f"Bearer {SECRET}"
    assert sample(metrics, "iterrefine_llm_requests_total", role="strong", status="ok") == 1
    assert sample(metrics, "iterrefine_llm_tokens_total", role="strong", kind="prompt") == 12
    assert sample(metrics, "iterrefine_llm_tokens_total", role="strong", kind="completion") == 5
    assert sample(metrics, "iterrefine_llm_seconds_count", role="strong") == 1


@pytest.mark.unit
async def test_ambient_openai_env_does_not_reach_the_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OPENAI_CUSTOM_HEADERS / OPENAI_ORG_ID cannot replace the role's key or leak to it."""
    monkeypatch.setenv("OPENAI_CUSTOM_HEADERS", "Authorization: Bearer ambient-key")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-ambient")
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return completion()

    async with llm(handler) as client:
        await client.chat(MESSAGES)
    assert seen[0].headers["authorization"] == f"Bearer {SECRET}"
    assert "openai-organization" not in seen[0].headers


@pytest.mark.unit
async def test_429_waits_at_least_retry_after() -> None:
    """A 429 is retried no earlier than its retry-after-ms says, then succeeds."""
    handler, arrivals = sequence(error(429, "slow down", **{"retry-after-ms": "150"}), completion())
    metrics = Metrics(CollectorRegistry())
    async with llm(handler, metrics=metrics) as client:
        result = await client.chat(MESSAGES)
    assert result.attempts == 2
    assert arrivals[1] - arrivals[0] >= 0.15
    stats = client.stats()
    assert (stats.requests, stats.errors, stats.retries) == (2, 1, 1)
    assert sample(metrics, "iterrefine_llm_requests_total", role="strong", status="429") == 1


@pytest.mark.unit
def test_parse_retry_after_forms() -> None:
    """Retry-After is read as ms, seconds or an HTTP date; junk and the past give None/0."""
    now = time.time()
    date = format_datetime(datetime.fromtimestamp(now + 30, UTC), usegmt=True)
    assert parse_retry_after(httpx2.Headers({"retry-after": date}), now=now) == pytest.approx(
        30, abs=1
    )
    assert parse_retry_after(httpx2.Headers({"Retry-After": "3"})) == 3.0
    assert parse_retry_after(httpx2.Headers({"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    assert parse_retry_after(httpx2.Headers({"retry-after": "soon"})) is None
    assert parse_retry_after(httpx2.Headers({"retry-after": "-5"})) == 0.0
    assert parse_retry_after(httpx2.Headers({})) is None


@pytest.mark.unit
async def test_500_then_success() -> None:
    """A 5xx is transient: retried, and the second answer is returned."""
    handler, arrivals = sequence(error(500, "boom"), completion("ok"))
    async with llm(handler) as client:
        result = await client.chat(MESSAGES)
    assert result.text == "ok" and len(arrivals) == 2


@pytest.mark.unit
async def test_read_timeout_then_success() -> None:
    """An httpx2 read timeout is mapped to a retried LLMTransientError, status "timeout"."""
    handler, arrivals = sequence(httpx2.ReadTimeout("slow"), completion("ok"))
    metrics = Metrics(CollectorRegistry())
    async with llm(handler, metrics=metrics) as client:
        result = await client.chat(MESSAGES)
    assert result.text == "ok" and len(arrivals) == 2
    assert sample(metrics, "iterrefine_llm_requests_total", role="strong", status="timeout") == 1


@pytest.mark.unit
async def test_total_deadline_bounds_a_slow_server() -> None:
    """timeout_s bounds the whole request even when the transport itself never times out."""
    calls = 0

    async def handler(request: httpx2.Request) -> httpx2.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(5)
        return completion("late but fine")

    started = time.monotonic()
    async with llm(handler, timeout_s=0.1) as client:
        result = await client.chat(MESSAGES)
    assert result.text == "late but fine" and calls == 2
    assert time.monotonic() - started < 2


@pytest.mark.unit
async def test_connection_error_is_transient() -> None:
    """A refused connection is retried and counted with status "connection"."""
    handler, _ = sequence(httpx2.ConnectError("refused"), completion())
    metrics = Metrics(CollectorRegistry())
    async with llm(handler, metrics=metrics) as client:
        await client.chat(MESSAGES)
    assert sample(metrics, "iterrefine_llm_requests_total", role="strong", status="connection") == 1


@pytest.mark.unit
async def test_401_is_not_retried_and_names_the_fix() -> None:
    """A 401 raises a non-retriable LLMError at once whose message says to check api_key_env."""
    handler, arrivals = sequence(error(401, "Incorrect API key provided"))
    async with llm(handler) as client:
        with pytest.raises(LLMError) as caught:
            await client.chat(MESSAGES)
    assert len(arrivals) == 1 and not caught.value.retriable
    message = str(caught.value)
    assert "api_key_env" in message and KEY_ENV in message
    assert "'test-model'" in message and "http://llm.test/v1" in message


@pytest.mark.unit
async def test_404_names_model_and_base_url() -> None:
    """A 404 (unknown model / wrong path) is an LLMError pointing at model and base_url."""
    handler, _ = sequence(error(404, "model not found"))
    async with llm(handler) as client:
        with pytest.raises(LLMError, match="base_url"):
            await client.chat(MESSAGES)


@pytest.mark.unit
async def test_non_json_200_is_an_error_not_a_string() -> None:
    """An HTML 200 (base_url not the API root) raises LLMError instead of passing a str on."""
    handler, _ = sequence(httpx2.Response(200, text="<html>welcome</html>"))
    async with llm(handler) as client:
        with pytest.raises(LLMError, match="base_url"):
            await client.chat(MESSAGES)


@pytest.mark.unit
async def test_non_json_200_says_why_and_is_not_retried() -> None:
    """A 200 with a cut-off JSON body fails at once, status invalid_response, saying why."""
    handler, arrivals = sequence(httpx2.Response(200, content=b'{"choices": [{"mess'))
    metrics = Metrics(CollectorRegistry())
    async with llm(handler, metrics=metrics) as client:
        with pytest.raises(LLMError, match=r"chat completion \(.*truncated\); check base_url"):
            await client.chat(MESSAGES)
    assert len(arrivals) == 1
    status = "invalid_response"
    assert sample(metrics, "iterrefine_llm_requests_total", role="strong", status=status) == 1


@pytest.mark.unit
async def test_hollow_completion_is_an_error() -> None:
    """JSON that is not a chat completion (no message, wrong types) raises LLMError."""
    for body in ({"choices": [{"index": 0}]}, {"choices": [{"message": {"content": 5}}]}):
        handler, _ = sequence(httpx2.Response(200, json=body))
        async with llm(handler) as client:
            with pytest.raises(LLMError, match="not an OpenAI chat completion"):
                await client.chat(MESSAGES)


@pytest.mark.unit
async def test_missing_usage_counts_zero() -> None:
    """A server that reports no usage still answers; its tokens count as 0."""
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]}
    handler, _ = sequence(httpx2.Response(200, json=body))
    async with llm(handler, tokens_per_minute=60_000) as client:
        result = await client.chat(MESSAGES)
    assert (result.text, result.prompt_tokens, result.completion_tokens) == ("hi", 0, 0)
    assert result.model == "test-model"


@pytest.mark.unit
async def test_loose_fields_fall_back_instead_of_failing() -> None:
    """Junk usage counts give 0, a non-string model or finish_reason falls back, null text is ""."""
    body = {
        "model": 7,
        "choices": [{"message": {"content": None, "tool_calls": []}, "finish_reason": 3}],
        "usage": {"prompt_tokens": -4, "completion_tokens": "many"},
        "system_fingerprint": "fp", "unknown": {"nested": [1, 2]},
    }
    handler, _ = sequence(httpx2.Response(200, json=body))
    async with llm(handler) as client:
        result = await client.chat(MESSAGES)
    assert (result.text, result.prompt_tokens, result.completion_tokens) == ("", 0, 0)
    assert result.model == "test-model" and result.finish_reason is None


@pytest.mark.unit
async def test_null_usage_counts_zero() -> None:
    """``"usage": null`` is read like a missing usage."""
    body = {"choices": [{"message": {"content": "hi"}}], "usage": None}
    handler, _ = sequence(httpx2.Response(200, json=body))
    async with llm(handler) as client:
        result = await client.chat(MESSAGES)
    assert (result.text, result.prompt_tokens, result.completion_tokens) == ("hi", 0, 0)


@pytest.mark.unit
async def test_empty_choices_are_retried() -> None:
    """A completion without choices is transient (status empty_response) and retried."""
    handler, arrivals = sequence(httpx2.Response(200, json={"choices": []}), completion("ok"))
    metrics = Metrics(CollectorRegistry())
    async with llm(handler, metrics=metrics) as client:
        result = await client.chat(MESSAGES)
    assert result.text == "ok" and result.attempts == 2 and len(arrivals) == 2
    status = "empty_response"
    assert sample(metrics, "iterrefine_llm_requests_total", role="strong", status=status) == 1


@pytest.mark.unit
async def test_retries_exhausted_raise_transient() -> None:
    """After max_retries retries of a 503 the LLMTransientError reaches the caller."""
    handler, arrivals = sequence(error(503, "overloaded"))
    async with llm(handler, max_retries=2) as client:
        with pytest.raises(LLMTransientError, match="503"):
            await client.chat(MESSAGES)
    assert len(arrivals) == 3
    assert client.stats().retries == 2 and client.stats().errors == 3


@pytest.mark.unit
async def test_x_should_retry_false_overrides_status() -> None:
    """A 500 with x-should-retry: false is not retried (the server's verdict wins)."""
    handler, arrivals = sequence(error(500, "fatal", **{"x-should-retry": "false"}))
    async with llm(handler) as client:
        with pytest.raises(LLMError):
            await client.chat(MESSAGES)
    assert len(arrivals) == 1


@pytest.mark.unit
async def test_post_json_retries_with_the_chat_budget() -> None:
    """A raw post (embeddings, completions) retries a 503 as chat does and returns the body."""
    handler, arrivals = sequence(error(503, "overloaded"), httpx2.Response(200, content=b"{}"))
    async with llm(handler) as client:
        assert await client.post_json("embeddings", {"input": "x"}) == b"{}"
    assert len(arrivals) == 2
    stats = client.stats()
    assert (stats.requests, stats.errors, stats.retries) == (2, 1, 1)


@pytest.mark.unit
async def test_post_json_gives_up_after_its_budget_outside_the_circuit() -> None:
    """max_retries + 1 raw posts, then LLMRetriesExhausted; the role's circuit stays shut."""
    handler, arrivals = sequence(error(503, "overloaded"))
    with structlog.testing.capture_logs() as logs:
        async with llm(handler, max_retries=2, circuit_failures=1) as client:
            with pytest.raises(LLMRetriesExhausted, match="after 3 attempts"):
                await client.post_json("completions", {"prompt": "x"})
            assert not client.circuit.is_open
    assert len(arrivals) == 3
    assert [entry["event"] for entry in logs] == ["llm_retry", "llm_retry", "llm_failed"]


@pytest.mark.unit
async def test_concurrency_limit_is_respected() -> None:
    """No more than max_concurrency requests are at the server at once."""
    current = peak = 0

    async def handler(request: httpx2.Request) -> httpx2.Response:
        nonlocal current, peak
        current += 1
        peak = max(peak, current)
        await asyncio.sleep(0.02)
        current -= 1
        return completion()

    async with llm(handler, max_concurrency=3) as client:
        await asyncio.gather(*(client.chat(MESSAGES) for _ in range(12)))
    assert peak == 3


@pytest.mark.unit
async def test_requests_per_minute_spaces_requests() -> None:
    """At 600 rpm (10/s, burst 10) the 13th request waits ~0.3 s for the bucket."""
    handler, arrivals = sequence(completion())
    async with llm(handler, requests_per_minute=600) as client:
        started = time.monotonic()
        await asyncio.gather(*(client.chat(MESSAGES) for _ in range(13)))
    assert 0.29 <= max(arrivals) - started < 2
    assert sorted(arrivals)[9] - started < 0.5  # the burst went out at once (spaced: 0.9 s)


@pytest.mark.unit
async def test_tokens_per_minute_is_corrected_by_usage() -> None:
    """The tokens bucket charges an estimate but refunds what usage shows was not spent."""
    # 6000 tokens/min = 100/s; each call is estimated at 100 tokens (max_tokens) but uses 10.
    handler, _ = sequence(completion(prompt_tokens=5, completion_tokens=5))
    started = time.monotonic()
    async with llm(handler, tokens_per_minute=6000) as client:
        for _ in range(5):
            await client.chat([{"role": "user", "content": ""}], max_tokens=100)
    # Without the correction each call after the first would wait a full second.
    assert time.monotonic() - started < 1.5


@pytest.mark.unit
async def test_token_bucket_lets_oversized_requests_through_as_debt() -> None:
    """A request larger than the bucket passes once it is full, and delays the next one."""
    bucket = TokenBucket(rate_per_s=100, capacity=10)
    assert await bucket.acquire(50) == 0
    waited = await bucket.acquire(1)
    assert 0.35 <= waited <= 0.6


@pytest.mark.unit
async def test_structured_output_only_when_enabled() -> None:
    """response_format json_schema is sent only with structured_output on and a schema given."""
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        bodies.append(json.loads(request.content))
        return completion('{"score": 7}')

    schema = {"type": "object", "properties": {"score": {"type": "integer"}}}
    async with llm(handler, structured_output=False) as client:
        await client.chat(MESSAGES, json_schema=schema)
    async with llm(handler, structured_output=True) as client:
        await client.chat(MESSAGES, json_schema=schema, schema_name="score")
        await client.chat(MESSAGES)
    assert "response_format" not in bodies[0]
    assert bodies[1]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "score", "schema": schema, "strict": True},
    }
    assert "response_format" not in bodies[2]


@pytest.mark.unit
async def test_structured_output_rejection_suggests_turning_it_off() -> None:
    """A 400 to a json_schema request names the other dialects (json_object, off, auto)."""
    handler, _ = sequence(error(400, "response_format not supported"))
    async with llm(handler, structured_output=True) as client:
        with pytest.raises(LLMError, match=r'structured_output = "auto".*"json_object".*"off"'):
            await client.chat(MESSAGES, json_schema={"type": "object"})


async def test_api_key_never_appears_in_logs_or_errors() -> None:
    """Even when the server echoes the key, neither captured logs nor the error contain it."""
    handler, _ = sequence(
        error(500, f"upstream rejected {SECRET}"), error(401, f"Incorrect API key {SECRET}")
    )
    with structlog.testing.capture_logs() as logs:
        async with llm(handler) as client:
            with pytest.raises(LLMError) as caught:
                await client.chat(MESSAGES)
    assert {entry["event"] for entry in logs} >= {"llm_retry", "llm_failed"}
    assert SECRET not in repr(logs)
    assert SECRET not in str(caught.value)


@pytest.mark.unit
async def test_roles_build_one_client_per_role() -> None:
    """LLMRoles serves each configured role, reports stats per role, and a missing one fails."""
    handler, _ = sequence(completion(prompt_tokens=3, completion_tokens=2))
    config = Config(llm={"strong": role_config(), "backbone": role_config(model="small")})
    async with (
        httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) as http,
        LLMRoles(config, http_client=http) as roles,
    ):
        await roles["strong"].chat(MESSAGES)
        assert roles["backbone"].config.model == "small"
        with pytest.raises(ConfigError, match="difficulty"):
            roles["difficulty"]
        assert set(roles) == {"strong", "backbone"}
    stats = roles.stats()
    assert stats["strong"].prompt_tokens == 3 and stats["backbone"].requests == 0


SCORE_MESSAGES = build_messages(
    "score", {"instruction": "Name a colour.", "input": "", "output": "Blue."}
)


@pytest.mark.unit
async def test_default_transport_talks_to_the_simulator() -> None:
    """Over real HTTP (openai's aiohttp transport) the answer, usage and model are read."""
    async with (
        SimServer(SimConfig(), port=0) as sim,
        LLMClient("strong", role_config(base_url=sim.base_url)) as client,
    ):
        results = await asyncio.gather(*(client.chat(SCORE_MESSAGES) for _ in range(5)))
    for result in results:
        assert result.text.startswith("Usable: ")
        assert result.prompt_tokens > 0 and result.completion_tokens > 0
        assert result.model == "sim-test-model" and result.finish_reason == "stop"


@pytest.mark.unit
async def test_a_burst_of_first_calls_works_out_the_platform_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """openai settles its platform header on a client's first request, in a thread per
    concurrent request until one finishes; the client settles it once, at start."""
    import openai._base_client

    real = openai._base_client.get_platform
    calls: list[float] = []

    def counted() -> Any:
        calls.append(time.monotonic())
        return real()

    monkeypatch.setattr(openai._base_client, "get_platform", counted)
    handler, arrivals = sequence(completion())
    async with llm(handler) as client:
        assert len(calls) == 1  # at start, before any call
        await asyncio.gather(*(client.chat(MESSAGES) for _ in range(40)))
    assert len(arrivals) == 40 and len(calls) == 1


@pytest.mark.unit
async def test_default_transport_maps_server_errors_and_deadlines() -> None:
    """Over real HTTP a 500 is transient and a hanging server hits the timeout_s deadline."""
    async with (
        SimServer(SimConfig(fault_500=1.0), port=0) as sim,
        LLMClient("strong", role_config(base_url=sim.base_url, max_retries=0)) as client,
    ):
        with pytest.raises(LLMTransientError, match="HTTP 500"):
            await client.chat(SCORE_MESSAGES)
    async with (
        SimServer(SimConfig(fault_hang=1.0, hang_s=60), port=0) as sim,
        LLMClient(
            "strong", role_config(base_url=sim.base_url, max_retries=0, timeout_s=0.2)
        ) as client,
    ):
        with pytest.raises(LLMTransientError, match=r"no answer within timeout_s=0\.2"):
            await client.chat(SCORE_MESSAGES)


@pytest.mark.unit
async def test_refused_connection_is_a_connection_error_not_a_timeout(
    unused_tcp_port: int,
) -> None:
    """openai's aiohttp transport calls a refused connection a timeout; we say "connection"."""
    metrics = Metrics(CollectorRegistry())
    config = role_config(base_url=f"http://127.0.0.1:{unused_tcp_port}/v1", max_retries=0)
    async with LLMClient("strong", config, metrics=metrics) as client:
        with pytest.raises(LLMTransientError, match="cannot connect"):
            await client.chat(MESSAGES)
    assert sample(metrics, "iterrefine_llm_requests_total", role="strong", status="connection") == 1


@pytest.mark.unit
def test_missing_key_variable_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A role whose api_key_env is unset fails at construction with the fix in the message."""
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ConfigError, match=KEY_ENV):
        LLMClient("strong", role_config())


@pytest.mark.unit
async def test_unclosed_client_warns() -> None:
    """A started client dropped without aclose() emits a ResourceWarning."""
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(sequence(completion())[0])) as h:
        client = LLMClient("strong", role_config(), http_client=h)
        await client.start()
        with pytest.warns(ResourceWarning, match="Unclosed LLMClient"):
            del client
            gc.collect()


@pytest.mark.unit
async def test_chat_requires_start() -> None:
    """chat() on a client that was never started says how to start it."""
    client = LLMClient("strong", role_config())
    with pytest.raises(RuntimeError, match="async with"):
        await client.chat(MESSAGES)


@pytest.mark.unit
def test_public_surface() -> None:
    """iterrefine.llm exports exactly its public names, sorted."""
    assert iterrefine.llm.__all__ == sorted(iterrefine.llm.__all__)
    assert set(iterrefine.llm.__all__) == {
        "ChatResult", "LLMClient", "LLMRoles", "LLMStats", "TokenBucket",
    }
