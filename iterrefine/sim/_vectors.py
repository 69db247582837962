"""The simulator's selection endpoints: planted-cluster embeddings, echoed logprobs.

Pure functions of the text (and the simulator's config), like every simulator answer:

* an embedding is the centre of the text's planted cluster (``h("cluster", text)`` over
  ``embedding_clusters`` seeded unit centres) plus seeded noise of norm
  ``embedding_noise``; with ``embedding_per_token`` it comes as one vector per word
  (pairs ``v ± e``, whose mean is the vector), as llama.cpp's server answers;
* a completion with ``echo`` scores one token per whitespace-separated word (the space
  before a word belongs to it): ``logprob = -(0.3 + 4·h("lp", word))``, halved when the
  word already appeared earlier in the prompt (so an output that repeats its instruction
  is "easier" given it, which is what IFD measures); the first token has no logprob.

numpy (the optional ``selection`` part of iterrefine) is imported by the embeddings only:
the server answers 501 naming the extra without it, and the logprobs need none.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import TYPE_CHECKING, Any, Final

from iterrefine.sim.answers import unit
from iterrefine.sim.config import SimConfig

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

_WORD: Final = re.compile(r"\s*\S+|\s+$")
#: The one token a completion generates after an echoed prompt.
_GENERATED: Final = " ok"
_CENTRES_SEED: Final = 20261128


def _seed(*parts: str) -> int:
    return int.from_bytes(hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest(),
                          "big")


@functools.lru_cache(maxsize=8)
def _centres(clusters: int, dim: int) -> NDArray[np.float64]:
    import numpy as np

    rng = np.random.default_rng(_CENTRES_SEED)
    centres = rng.normal(size=(clusters, dim))
    norms: NDArray[np.float64] = np.linalg.norm(centres, axis=1, keepdims=True)
    return centres / norms


def planted_cluster(text: str, config: SimConfig) -> int:
    """The cluster the simulator planted ``text`` in."""
    return int(unit("cluster", text) * config.embedding_clusters)


def embedding(text: str, config: SimConfig) -> NDArray[np.float64]:
    """The pooled vector of ``text``: its planted centre plus seeded noise."""
    import numpy as np

    dim = config.embedding_dim
    centre = _centres(config.embedding_clusters, dim)[planted_cluster(text, config)]
    noise = np.random.default_rng(_seed("noise", text)).normal(size=dim)
    scale = config.embedding_noise / max(float(np.linalg.norm(noise)), 1e-12)
    vector: NDArray[np.float64] = centre + noise * scale
    return vector


def embedding_answer(text: str, config: SimConfig) -> list[float] | list[list[float]]:
    """What ``/v1/embeddings`` answers for one input."""
    import numpy as np

    vector = embedding(text, config)
    if not config.embedding_per_token:
        return [float(x) for x in vector]
    words = max(1, len(text.split()) // 2)
    rng = np.random.default_rng(_seed("tokens", text))
    rows: list[list[float]] = []
    for _ in range(words):
        jitter = rng.normal(scale=0.05, size=vector.shape)
        rows += [list(map(float, vector + jitter)), list(map(float, vector - jitter))]
    return rows


def _counts_on(tokens: list[str]) -> bool:
    """Whether the last token continues a counting sequence (``…, 7, 8,``)."""
    if len(tokens) < 2:
        return False
    last, before = (t.strip().rstrip(",") for t in tokens[-2:][::-1])
    return last.isdigit() and before.isdigit() and int(last) == int(before) + 1


def echo_logprobs(prompt: str) -> dict[str, Any]:
    """``choices[0].logprobs`` of an echoed prompt plus the one generated token."""
    tokens: list[str] = []
    offsets: list[int] = []
    values: list[float | None] = []
    seen: set[str] = set()
    for match in _WORD.finditer(prompt):
        token = match.group()
        word = token.strip().lower()
        tokens.append(token)
        offsets.append(match.start())
        if not values:
            values.append(None)
        elif _counts_on(tokens):
            values.append(-0.05)  # a counting sequence is near-certain, as for a real model
        else:
            value = -(0.3 + 4.0 * unit("lp", word))
            values.append(round(value / 2 if word in seen else value, 6))
        seen.add(word)
    prompt_tokens = len(tokens)
    tokens.append(_GENERATED)
    offsets.append(len(prompt))
    values.append(-1.0)
    return {
        "tokens": tokens,
        "token_logprobs": values,
        "text_offset": offsets,
        "top_logprobs": None,
        "prompt_tokens": prompt_tokens,
    }


def completion_text(prompt: str, echo: bool) -> str:
    return prompt + _GENERATED if echo else _GENERATED
