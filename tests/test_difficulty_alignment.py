"""Difficulty that is right or refused: the start-up check of the ``difficulty`` role.

The correct answer is real: SmolLM2-135M's logprobs for counting on from "10,"
(``tests/data/counting_logprobs_smollm2.json``, recorded on xllamacpp, whose generated
tokens' logprobs are aligned; xllamacpp itself does not echo prompts, so the recording
is of a continuation, laid out here as an echo). The shifted answer is *derived* from it
by shifting, as llama-cpp-python's echo does: each position reports the next position's
distribution (its top list, and the token's own logprob under it — below that top list,
taken as the list's lowest value minus 5 when the token is not in it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from iterrefine.app.exit_codes import USAGE
from iterrefine.errors import LLMError
from iterrefine.selection.alignment import (
    DifficultyMisaligned,
    check_alignment,
    judge_alignment,
)
from iterrefine.selection.difficulty import DifficultyScorer
from iterrefine.sim import SimConfig, SimServer

RECORDING = json.loads((Path(__file__).parent / "data" /
                        "counting_logprobs_smollm2.json").read_text(encoding="utf-8"))


def _correct_echo() -> dict[str, Any]:
    """The recording in the echo layout: tokens, their logprobs, each position's top list,
    plus one generated token at the end (as an echo answer has)."""
    content = RECORDING["response"]["choices"][0]["logprobs"]["content"]
    tokens = [c["token"] for c in content]
    values: list[float | None] = [None] + [c["logprob"] for c in content[1:]]
    top = [{t["token"]: t["logprob"] for t in c["top_logprobs"]} for c in content]
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": top}


def _shifted(echo: dict[str, Any], *, with_top: bool = True) -> dict[str, Any]:
    """llama-cpp-python's layout, derived: position i reports position i+1's distribution."""
    tokens, top = echo["tokens"], echo["top_logprobs"]
    values: list[float | None] = []
    shifted_top: list[dict[str, float] | None] = []
    for index, token in enumerate(tokens):
        following = top[index + 1] if index + 1 < len(top) else None
        shifted_top.append(following)
        if following is None:
            values.append(None)
        else:
            values.append(following.get(token, min(following.values()) - 5.0))
    return {"tokens": tokens, "token_logprobs": values,
            "top_logprobs": shifted_top if with_top else None}


def _body(logprobs: dict[str, Any]) -> bytes:
    return json.dumps({"choices": [{"text": "", "logprobs": logprobs}]}).encode()


class Recorded:
    """The difficulty role's client, answering with one recorded body."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.asked: list[dict[str, Any]] = []

    async def post_json(self, path: str, body: dict[str, Any]) -> bytes:
        self.asked.append(body)
        return self.body


@pytest.mark.unit
def test_a_correct_server_is_accepted_as_aligned() -> None:
    """SmolLM2's real logprobs on counting are near zero: aligned."""
    alignment = judge_alignment(_body(_correct_echo()), where="srv")
    assert alignment.verdict == "aligned" and alignment.mean_logprob > -0.5


@pytest.mark.unit
def test_a_shifted_server_with_top_lists_is_corrected() -> None:
    """Shifted by one, the mean is far below zero; read back from the top lists it is the
    correct server's again, so the role is corrected, not refused."""
    echo = _correct_echo()
    shifted = _shifted(echo)
    known = [v for v in shifted["token_logprobs"][6:-1] if v is not None]
    assert sum(known) / len(known) < -3
    alignment = judge_alignment(_body(shifted), where="srv")
    assert alignment.verdict == "shifted"
    assert alignment.corrected_mean_logprob is not None
    assert alignment.corrected_mean_logprob > -0.5


@pytest.mark.unit
async def test_a_shifted_server_without_top_lists_is_refused_naming_it() -> None:
    """No way to correct it: refused as a configuration error (run exits 2), naming the
    server and what to use instead."""
    client = Recorded(_body(_shifted(_correct_echo(), with_top=False)))
    with pytest.raises(DifficultyMisaligned) as caught:
        await check_alignment(client, where="http://127.0.0.1:9/v1 (model tiny)")
    message = str(caught.value)
    assert "http://127.0.0.1:9/v1 (model tiny)" in message and "vLLM" in message
    assert caught.value.retriable is False and USAGE == 2
    assert client.asked[0]["max_tokens"] == 1 and client.asked[0]["echo"] is True


@pytest.mark.unit
async def test_a_server_that_ignores_echo_is_refused() -> None:
    """xllamacpp answers /v1/completions without echoed logprobs: refused, saying so."""
    client = Recorded(json.dumps(RECORDING["response"]).encode())
    with pytest.raises(DifficultyMisaligned, match="echoes no prompt logprobs"):
        await check_alignment(client, where="xllamacpp")


@pytest.mark.unit
async def test_a_corrected_scorer_reads_values_from_the_top_lists() -> None:
    """With a shifted verdict the scorer asks for top lists and uses the corrected values;
    an answer it cannot correct fails with the reason instead of a wrong perplexity."""
    shifted = _shifted(_correct_echo())
    alignment = judge_alignment(_body(shifted), where="srv")
    prompt = "".join(shifted["tokens"][:-1])
    client = Recorded(_body({**shifted, "text_offset": None}))
    scorer = DifficultyScorer(client, "instruction_ppl", "m", alignment=alignment)
    corrected = await scorer._echo(prompt)
    assert client.asked[0]["logprobs"] >= 1
    assert all(v is None or v > -1 for v in corrected[0][6:])
    broken = {**shifted, "top_logprobs": [None] * len(shifted["tokens"])}
    scorer.client = Recorded(_body(broken))
    with pytest.raises(LLMError, match="cannot be corrected"):
        await scorer._echo(prompt)


async def test_the_simulator_is_an_aligned_server() -> None:
    """The simulator's echo passes the check (a counting sequence is near-certain there)."""
    from iterrefine.config import LLMRoleConfig
    from iterrefine.llm import LLMClient

    async with SimServer(SimConfig(latency_ms=0, jitter_ms=0), port=0) as sim:
        role = LLMRoleConfig(base_url=sim.base_url, model="sim-difficulty")
        async with LLMClient("difficulty", role) as client:
            alignment = await check_alignment(client, where=sim.base_url)
    assert alignment.verdict == "aligned"
