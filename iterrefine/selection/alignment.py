"""Difficulty that is right or refused: a start-up check of the ``difficulty`` role.

Perplexities come from the logprobs a ``/v1/completions`` server echoes for the prompt's
tokens, and servers get them wrong without a word. llama-cpp-python's echo is shifted
by one token: the logprob it reports for a token is that token's probability under the
distribution of the *next* position (for "The cat sat on the mat." it gives " sat"
−9.2, while that position's top entry, " on", has −0.84). Its perplexities came out at
49k–116k where the paper recorded 8.75–71.4. xllamacpp ignores ``echo`` altogether.

So before the first item, the role is asked to echo a counting sequence, whose every
token after the first few is near-certain for any language model:

* the mean logprob after the first :data:`SKIP_TOKENS` tokens is above
  :data:`NEAR_ZERO`: the server is **aligned**, its values are used as they are;
* otherwise, if the answer carries each position's ``top_logprobs``, the shift is
  undone by reading each token's logprob from the previous position's list; near
  zero after that, the server is **shifted** and iterrefine corrects every answer the
  same way (:func:`shifted_back`; an item whose token is missing from that list fails
  with the reason, it is never scored wrongly);
* anything else — no echoed logprobs, or wrong both ways — is refused: a
  :class:`DifficultyMisaligned` (a configuration error: ``run`` exits 2) naming the
  server and what to use instead.
"""

from __future__ import annotations

from typing import Any, Final, Literal, Protocol

import msgspec
import structlog

from iterrefine.errors import ConfigError, IterrefineError, LLMError

log = structlog.get_logger("iterrefine.selection")

__all__ = ["COUNTING_PROMPT", "NEAR_ZERO", "TOP_LOGPROBS", "Alignment", "DifficultyMisaligned",
           "check_alignment", "corrected_values", "judge_alignment", "shifted_back"]

COUNTING_PROMPT: Final = ", ".join(str(n) for n in range(1, 41)) + ","
SKIP_TOKENS: Final = 6
#: Mean logprob a correct model stays above on the counting sequence (SmolLM2-135M and
#: the simulator give about −0.05; the shifted echo gives −5 to −11 per number).
NEAR_ZERO: Final = -1.0
#: Top entries asked for: the check and a corrected server's answers need each
#: position's list to find the next token in it.
TOP_LOGPROBS: Final = 5

Verdict = Literal["aligned", "shifted"]


class DifficultyMisaligned(ConfigError):
    """The difficulty role's server gives logprobs that cannot be made right."""

    reason = "difficulty_misaligned"


class Alignment(msgspec.Struct, frozen=True, kw_only=True):
    """What the check found: ``shifted`` answers are corrected with :func:`shifted_back`."""

    verdict: Verdict
    mean_logprob: float
    corrected_mean_logprob: float | None = None


class _Logprobs(msgspec.Struct, frozen=True):
    token_logprobs: list[float | None] = []
    tokens: list[str] | None = None
    top_logprobs: list[dict[str, float] | None] | None = None


class _Choice(msgspec.Struct, frozen=True):
    logprobs: _Logprobs | None = None


class _Completion(msgspec.Struct, frozen=True):
    choices: list[_Choice] = []


_decode = msgspec.json.Decoder(_Completion).decode


def _logprobs(body: bytes) -> _Logprobs | None:
    try:
        completion = _decode(body)
    except msgspec.DecodeError:
        return None
    return completion.choices[0].logprobs if completion.choices else None


def shifted_back(
    tokens: list[str], top: list[dict[str, float] | None],
) -> list[float | None] | None:
    """Each token's logprob from the previous position's ``top_logprobs`` (the first has
    none); None when a token is missing from its list (no correction possible)."""
    values: list[float | None] = [None]
    for index in range(1, len(tokens)):
        entry = top[index - 1] if index - 1 < len(top) else None
        if not entry or tokens[index] not in entry:
            return None
        values.append(entry[tokens[index]])
    return values


def corrected_values(body: bytes, count: int) -> list[float | None]:
    """A shifted server's answer made right: the first ``count`` prompt tokens' logprobs
    read from the previous positions' top lists. Raises :class:`LLMError` when a token
    is not in its list: the item cannot be scored, and is not scored wrongly."""
    logprobs = _logprobs(body)
    values = None
    if logprobs is not None and logprobs.tokens and logprobs.top_logprobs:
        values = shifted_back(logprobs.tokens[:count], logprobs.top_logprobs)
    if values is None:
        raise LLMError(
            "difficulty: the server's logprobs are shifted by one token and this answer "
            f"cannot be corrected (a token is not among the previous position's top "
            f"{TOP_LOGPROBS}); use a server whose echo is aligned")
    return values


def _mean_after_skip(values: list[float | None]) -> float | None:
    known = [v for v in values[SKIP_TOKENS:] if v is not None]
    return sum(known) / len(known) if known else None


def judge_alignment(body: bytes, *, where: str) -> Alignment:
    """The verdict on one echoed counting prompt (its whole answer ``body``)."""
    logprobs = _logprobs(body)
    if logprobs is None or len(logprobs.token_logprobs) <= SKIP_TOKENS:
        raise DifficultyMisaligned(
            f"the difficulty role at {where} echoes no prompt logprobs on /v1/completions "
            "(echo=true, logprobs): it cannot score difficulty. xllamacpp and other llama.cpp "
            "servers ignore echo; use a server that echoes prompt logprobs (vLLM, or "
            "`iterrefine sim-llm` for tests)")
    # The echo answer ends with the one generated token; the prompt's come first.
    mean = _mean_after_skip(logprobs.token_logprobs[:-1])
    if mean is not None and mean > NEAR_ZERO:
        return Alignment(verdict="aligned", mean_logprob=round(mean, 3))
    corrected = None
    if logprobs.tokens and logprobs.top_logprobs:
        values = shifted_back(logprobs.tokens[:-1], logprobs.top_logprobs)
        corrected = None if values is None else _mean_after_skip(values)
    if corrected is not None and corrected > NEAR_ZERO:
        log.warning("difficulty_shifted_corrected", server=where, mean_logprob=mean,
                    corrected_mean_logprob=corrected)
        return Alignment(verdict="shifted", mean_logprob=round(mean or 0.0, 3),
                         corrected_mean_logprob=round(corrected, 3))
    shown = "none" if mean is None else f"{mean:.2f}"
    raise DifficultyMisaligned(
        f"the difficulty role at {where} gives wrong prompt logprobs: on a counting "
        f"sequence their mean after the first tokens is {shown} (a correct server gives "
        f"about 0, above {NEAR_ZERO:g}); llama-cpp-python's echo is shifted by one token "
        "like this, and its answer carries no top_logprobs to correct it. Perplexities "
        "from it would be wrong: use a server whose echo is aligned (vLLM, or `iterrefine "
        "sim-llm` for tests)")


class RawPoster(Protocol):
    async def post_json(self, path: str, body: dict[str, Any]) -> bytes: ...


async def check_alignment(client: RawPoster, *, where: str) -> Alignment:
    """Ask the role to echo :data:`COUNTING_PROMPT` and judge its logprobs."""
    body = {"prompt": COUNTING_PROMPT, "echo": True, "logprobs": TOP_LOGPROBS,
            "max_tokens": 1, "temperature": 0.0}
    try:
        answer = await client.post_json("completions", body)
    except IterrefineError as exc:
        raise DifficultyMisaligned(
            f"the difficulty role at {where} did not answer the start-up check on "
            f"/v1/completions: {exc}") from None
    alignment = judge_alignment(answer, where=where)
    log.info("difficulty_alignment", server=where, verdict=alignment.verdict,
             mean_logprob=alignment.mean_logprob)
    return alignment
