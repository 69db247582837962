"""Instruction difficulty from a small model's completion logprobs (IQD stage 2).

An OpenAI-compatible ``/v1/completions`` endpoint that echoes the prompt with its
token logprobs, *correctly aligned*, serves (vLLM; ``iterrefine sim-llm`` for tests):
``echo=true``, ``logprobs=0`` and ``max_tokens=1`` (never 0: llama.cpp's server reads 0
as "no limit" and generates on). Only the echoed prompt tokens are read; the one
generated token is ignored. llama-cpp-python's echo is shifted by one token and
xllamacpp's server ignores ``echo``: the start-up check
(:mod:`iterrefine.selection.alignment`) corrects a shifted server whose answers carry
``top_logprobs``, and refuses any other (exit 2), so a wrong perplexity is never used.

Two metrics:

* ``instruction_ppl`` — what the paper's code ran under the name "IFD_Score": the
  perplexity ``exp(mean NLL)`` of the item in the Alpaca template *without* its output.
* ``ifd`` — Cherry-LLM's Instruction-Following Difficulty: the perplexity of the output
  given the instruction (template + output, scoring the output's tokens) divided by
  the perplexity of the output alone. Two calls.
"""

from __future__ import annotations

import math
from typing import Any, Final, Literal, Protocol

import msgspec

from iterrefine.errors import LLMError
from iterrefine.item.model import Difficulty
from iterrefine.selection.alignment import TOP_LOGPROBS, Alignment, corrected_values

Metric = Literal["ifd", "instruction_ppl"]

#: The Alpaca training template (Stanford Alpaca's ``PROMPT_DICT``), as the paper used.
_WITH_INPUT: Final = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
_NO_INPUT: Final = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:"
)


def alpaca_prompt(instruction: str, input: str) -> str:
    """The item in the Alpaca template, up to and including ``### Response:``."""
    if input.strip():
        return _WITH_INPUT.format(instruction=instruction, input=input)
    return _NO_INPUT.format(instruction=instruction)


class RawPoster(Protocol):
    """The ``difficulty`` role's client (``iterrefine.llm.LLMClient`` implements it)."""

    async def post_json(self, path: str, body: dict[str, Any]) -> bytes: ...


class _Logprobs(msgspec.Struct, frozen=True):
    token_logprobs: list[float | None]
    text_offset: list[int] | None = None


class _Choice(msgspec.Struct, frozen=True):
    logprobs: _Logprobs | None = None


class _Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int | None = None


class _Completion(msgspec.Struct, frozen=True):
    choices: list[_Choice]
    model: Any = None
    usage: _Usage | None = None


_decode = msgspec.json.Decoder(_Completion).decode


def prompt_logprobs(body: bytes, prompt: str) -> tuple[list[float | None], list[int]]:
    """The echoed prompt tokens' logprobs and character offsets from a completion answer.

    Raises :class:`LLMError` when the answer carries no echoed logprobs (a server that
    ignores ``echo``/``logprobs``: no retry can fix that).
    """
    try:
        completion = _decode(body)
    except msgspec.DecodeError as exc:
        raise LLMError(f"difficulty: the answer is not a completion: {exc}") from None
    logprobs = completion.choices[0].logprobs if completion.choices else None
    if logprobs is None or not logprobs.token_logprobs:
        raise LLMError(
            "difficulty: the completion has no echoed logprobs; the endpoint must support "
            "echo=true with logprobs on /v1/completions (vLLM and llama.cpp's server do)"
        )
    values = logprobs.token_logprobs
    offsets = logprobs.text_offset
    if offsets is None or len(offsets) != len(values):
        offsets = [0] * len(values)
    # Keep the prompt's tokens only: by the usage count when given, else by offset.
    usage = completion.usage
    count = usage.prompt_tokens if usage is not None and usage.prompt_tokens else None
    if count is None or count > len(values):
        count = sum(1 for offset in offsets if offset < len(prompt)) or len(values)
    return values[:count], offsets[:count]


def perplexity(logprobs: list[float | None]) -> float:
    """``exp(mean NLL)`` over the tokens that have a logprob (the first one has none)."""
    known = [value for value in logprobs if value is not None and math.isfinite(value)]
    if not known:
        raise LLMError("difficulty: no token with a logprob to compute a perplexity from")
    return math.exp(-sum(known) / len(known))


class DifficultyScorer:
    """Scores items with one metric through one ``/v1/completions`` endpoint."""

    def __init__(
        self, client: RawPoster, metric: Metric, model: str, *, max_chars: int = 8000,
        alignment: Alignment | None = None,
    ) -> None:
        self.client = client
        self.metric = metric
        self.model = model
        self.max_chars = max_chars
        #: The start-up check's verdict; ``shifted`` answers are corrected.
        self.shifted = alignment is not None and alignment.verdict == "shifted"

    async def _echo(self, prompt: str) -> tuple[list[float | None], list[int]]:
        body = {"prompt": prompt, "echo": True,
                "logprobs": TOP_LOGPROBS if self.shifted else 0, "max_tokens": 1,
                "temperature": 0.0}
        answer = await self.client.post_json("completions", body)
        values, offsets = prompt_logprobs(answer, prompt)
        if self.shifted:
            values = corrected_values(answer, len(values))
        return values, offsets

    async def score(self, instruction: str, input: str, output: str) -> Difficulty:
        if self.metric == "instruction_ppl":
            values, _ = await self._echo(alpaca_prompt(instruction, input)[: self.max_chars])
            return Difficulty(value=perplexity(values), metric=self.metric, model=self.model)
        # IFD: the output's tokens after the template, then the output on its own.
        half = self.max_chars // 2
        template = alpaca_prompt(instruction, input)[:half]
        output = output[:half]
        joined = f"{template}\n{output}"
        values, offsets = await self._echo(joined)
        start = len(template) + 1
        conditioned = [v for v, offset in zip(values, offsets, strict=True) if offset >= start]
        alone, _ = await self._echo(output)
        ratio = perplexity(conditioned) / perplexity(alone)
        return Difficulty(value=ratio, metric=self.metric, model=self.model)
