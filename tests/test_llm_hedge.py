"""Hedged requests: a request lost by the server costs a short delay, not the whole timeout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx2
import pytest

from iterrefine.config import LLMRoleConfig
from iterrefine.errors import LLMRetriesExhausted
from iterrefine.llm import LLMClient
from iterrefine.llm._hedge import BUDGET, MIN_SAMPLES
from iterrefine.retry import Backoff

pytestmark = pytest.mark.unit

MESSAGES = [{"role": "user", "content": "Hi?"}]


class Endpoint:
    """Answers at once, except the requests numbered in ``hang``, which never answer."""

    def __init__(self, hang: set[int]) -> None:
        self.hang = hang
        self.requests = 0
        self.cancelled = 0

    async def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests += 1
        number = self.requests
        if number in self.hang:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return httpx2.Response(200, json={
            "model": "m", "choices": [{"message": {"content": f"answer {number}"},
                                       "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1}})


@asynccontextmanager
async def client(endpoint: Endpoint, **overrides: object) -> AsyncIterator[LLMClient]:
    settings: dict[str, object] = {"structured_output": "off", "max_retries": 0,
                                   "hedge_min_delay_s": 0.05, "timeout_s": 5.0, **overrides}
    config = LLMRoleConfig(base_url="http://llm.test/v1", model="m", **settings)  # type: ignore[arg-type]
    async with (
        httpx2.AsyncClient(transport=httpx2.MockTransport(endpoint)) as http,
        LLMClient("strong", config, http_client=http,
                  backoff=Backoff(base_s=0.001, max_s=0.005)) as llm,
    ):
        yield llm


async def warm(llm: LLMClient) -> None:
    """Enough answered requests for the role to know its usual latency."""
    for _ in range(MIN_SAMPLES + 8):
        await llm.chat(MESSAGES)


async def test_a_lost_request_is_answered_by_its_copy() -> None:
    """The request the server never answers is sent again after the role's usual time;
    the copy's answer is returned and the lost request cancelled, with no retry spent."""
    hung = MIN_SAMPLES + 9
    endpoint = Endpoint(hang={hung})
    async with client(endpoint) as llm:
        await warm(llm)
        reply = await llm.chat(MESSAGES)
        stats = llm.stats()
    assert reply.text == f"answer {hung + 1}"
    assert (stats.hedged, stats.retries, endpoint.cancelled) == (1, 0, 1)


async def test_a_request_of_the_first_burst_is_hedged_once_latencies_are_known() -> None:
    """A run starts with a burst: a request lost before the role had any latency to
    judge by is still hedged, as soon as the others' answers tell the usual time."""
    endpoint = Endpoint(hang={1})
    async with client(endpoint) as llm:
        replies = await asyncio.gather(*(llm.chat(MESSAGES) for _ in range(MIN_SAMPLES + 20)))
    assert "answer 1" not in {reply.text for reply in replies}
    assert llm.stats().hedged == 1 and endpoint.cancelled == 1


async def test_copies_keep_coming_while_they_are_lost_too() -> None:
    """Two lost copies in a row: a third copy answers (up to three copies)."""
    first = MIN_SAMPLES + 9
    endpoint = Endpoint(hang={first, first + 1, first + 2})
    async with client(endpoint) as llm:
        await warm(llm)
        reply = await llm.chat(MESSAGES)
    assert reply.text == f"answer {first + 3}" and llm.stats().hedged == 3


async def test_without_hedging_a_lost_request_waits_out_the_timeout() -> None:
    """hedge = false (or a role without latencies to judge by yet): the lost request
    costs the whole timeout_s and then the call fails, as before hedging existed."""
    hung = MIN_SAMPLES + 9
    endpoint = Endpoint(hang={hung})
    async with client(endpoint, hedge=False, timeout_s=0.3) as llm:
        await warm(llm)
        with pytest.raises(LLMRetriesExhausted, match=r"timeout_s=0\.3"):
            await llm.chat(MESSAGES)
        assert llm.stats().hedged == 0
    cold = Endpoint(hang={1})
    async with client(cold, timeout_s=0.3) as llm:
        with pytest.raises(LLMRetriesExhausted):
            await llm.chat(MESSAGES)
        assert llm.stats().hedged == 0


async def test_hedges_stay_within_their_budget() -> None:
    """When every request hangs (a server down, not a lost request), copies stop at the
    budget: a fifth of the requests, not three per call."""
    endpoint = Endpoint(hang=set(range(MIN_SAMPLES + 9, 10_000)))
    # circuit_failures: an open circuit would hold the calls; here they must end.
    async with client(endpoint, timeout_s=0.2, circuit_failures=10_000) as llm:
        await warm(llm)
        calls = 40
        results = await asyncio.gather(*(llm.chat(MESSAGES) for _ in range(calls)),
                                       return_exceptions=True)
        assert all(isinstance(r, LLMRetriesExhausted) for r in results)
        # Copies are at most BUDGET of all requests (copies included), plus one;
        # unbudgeted, every call would have sent three: 120.
        hedged = llm.stats().hedged
        assert 0 < hedged <= BUDGET * (MIN_SAMPLES + 8 + calls + hedged) + 1
