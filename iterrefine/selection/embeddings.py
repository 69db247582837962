"""Item vectors from an OpenAI-compatible ``/v1/embeddings`` endpoint (the ``embedding`` role).

The paper embeds an item as the mean over tokens of a small model's last hidden state.
Servers answer either one pooled vector (OpenAI, vLLM) or, for models without a pooling
layer, one vector per token (llama.cpp's server): the latter is mean-pooled here, which
is the paper's own pooling. A base64 answer (``encoding_format="base64"``) is read too.
The vector stays in the process that asked for it; only the cluster id travels on.
"""

from __future__ import annotations

import base64
from typing import Any, Protocol

import msgspec
import numpy as np
from numpy.typing import NDArray

from iterrefine.errors import LLMError
from iterrefine.selection.difficulty import alpaca_prompt

Vector = NDArray[np.float32]


class RawPoster(Protocol):
    async def post_json(self, path: str, body: dict[str, Any]) -> bytes: ...


class _Datum(msgspec.Struct, frozen=True):
    embedding: Any


class _Answer(msgspec.Struct, frozen=True):
    data: list[_Datum]


_decode = msgspec.json.Decoder(_Answer).decode


def pooled_vector(body: bytes) -> Vector:
    """The first input's vector: as given, or the mean of its per-token vectors."""
    try:
        answer = _decode(body)
    except msgspec.DecodeError as exc:
        raise LLMError(f"embedding: the answer is not an embeddings list: {exc}") from None
    if not answer.data:
        raise LLMError("embedding: the answer has no data")
    raw = answer.data[0].embedding
    try:
        if isinstance(raw, str):
            array = np.frombuffer(base64.b64decode(raw), dtype=np.float32)
        else:
            array = np.asarray(raw, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise LLMError(f"embedding: unreadable vector: {exc}") from None
    if array.ndim == 2 and array.shape[0] > 0:
        array = array.mean(axis=0)
    if array.ndim != 1 or array.size == 0 or not np.isfinite(array).all():
        raise LLMError(f"embedding: expected a vector or a list of vectors, got shape "
                       f"{array.shape}")
    return array.astype(np.float32, copy=False)


class Embedder:
    """Embeds items as the paper did: the Alpaca template without the output."""

    def __init__(self, client: RawPoster, model: str, *, max_chars: int = 8000) -> None:
        self.client = client
        self.model = model
        self.max_chars = max_chars

    async def embed(self, instruction: str, input: str) -> Vector:
        text = alpaca_prompt(instruction, input)[: self.max_chars]
        body = {"input": text, "encoding_format": "float"}
        return pooled_vector(await self.client.post_json("embeddings", body))
