"""Item vectors from an OpenAI-compatible ``/v1/embeddings`` endpoint (the ``embedding`` role).

The paper embeds an item as the mean over tokens of a small model's last hidden state,
without normalising it. iterrefine chooses the pooling and the normalisation itself
(``selection.pooling``, ``selection.normalize``) rather than leaving them to the server:
a server that answers one vector per token (llama.cpp's server started with
``--pooling none``, llama-cpp-python for models without a pooling layer) is pooled here
(``mean``, the paper's, or ``last``), and the vector is then L2-normalised here or not.
A server that answers one vector has pooled it itself, by rules iterrefine cannot see
(llama.cpp's default also L2-normalises): that is recorded as ``pooling = "server"`` on
the item, and logged once. A base64 answer (``encoding_format="base64"``) is read too.
The vector stays with the selection mechanism; only the cluster id travels on the item.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import numpy as np
import structlog
from numpy.typing import NDArray

from iterrefine.errors import LLMError
from iterrefine.selection.difficulty import alpaca_prompt

Vector = NDArray[np.float32]
log = structlog.get_logger("iterrefine.selection")


class RawPoster(Protocol):
    async def post_json(self, path: str, body: dict[str, Any]) -> bytes: ...


class _Datum(msgspec.Struct, frozen=True):
    embedding: Any


class _Answer(msgspec.Struct, frozen=True):
    data: list[_Datum]


#: The OpenAI shape ``{"data": [...]}``, or llama.cpp's native ``/embeddings`` answer, a
#: bare list (the only one that serves per-token vectors: its ``/v1/embeddings`` refuses
#: ``--pooling none``; point the role's base URL at the server root to use it).
_decode = msgspec.json.Decoder(_Answer | list[_Datum]).decode


@dataclass(frozen=True, slots=True)
class Embedding:
    """One item's vector and how it was made from the endpoint's answer."""

    vector: Vector
    #: ``mean`` / ``last`` (pooled here over ``tokens`` vectors) or ``server``.
    pooling: str
    normalization: str
    tokens: int


def _raw_array(body: bytes) -> NDArray[np.float32]:
    try:
        answer = _decode(body)
    except msgspec.DecodeError as exc:
        raise LLMError(f"embedding: the answer is not an embeddings list: {exc}") from None
    data = answer if isinstance(answer, list) else answer.data
    if not data:
        raise LLMError("embedding: the answer has no data")
    raw = data[0].embedding
    try:
        if isinstance(raw, str):
            array = np.frombuffer(base64.b64decode(raw), dtype=np.float32)
        else:
            array = np.asarray(raw, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise LLMError(f"embedding: unreadable vector: {exc}") from None
    if array.ndim not in (1, 2) or array.size == 0 or not np.isfinite(array).all():
        raise LLMError(f"embedding: expected a vector or a list of vectors, got shape "
                       f"{array.shape}")
    return array


def embedding_of(body: bytes, pooling: str = "mean", normalize: str = "none") -> Embedding:
    """The first input's vector, pooled and normalised as configured."""
    array = _raw_array(body)
    if array.ndim == 2:
        vector = array.mean(axis=0) if pooling == "mean" else array[-1]
        how, tokens = pooling, int(array.shape[0])
    else:
        vector, how, tokens = array, "server", 1
    # A vector pooled by the server is normalised as the server chose (llama.cpp: L2),
    # unless normalised again here: say so rather than "none".
    normalized = normalize if normalize == "l2" or how != "server" else "server"
    if normalize == "l2":
        norm = float(np.linalg.norm(vector))
        if norm == 0.0:
            raise LLMError("embedding: a zero vector cannot be normalised")
        vector = vector / norm
    return Embedding(vector.astype(np.float32, copy=False), how, normalized, tokens)


def pooled_vector(body: bytes) -> Vector:
    """The first input's vector: as given, or the mean of its per-token vectors."""
    return embedding_of(body).vector


class Embedder:
    """Embeds items as the paper did: the Alpaca template without the output."""

    def __init__(self, client: RawPoster, model: str, *, max_chars: int = 8000,
                 pooling: str = "mean", normalize: str = "none") -> None:
        self.client = client
        self.model = model
        self.max_chars = max_chars
        self.pooling = pooling
        self.normalize = normalize
        self._warned = False

    async def embed(self, instruction: str, input: str) -> Vector:
        return (await self.embedding(instruction, input)).vector

    async def embedding(self, instruction: str, input: str) -> Embedding:
        text = alpaca_prompt(instruction, input)[: self.max_chars]
        body = {"input": text, "encoding_format": "float"}
        found = embedding_of(await self.client.post_json("embeddings", body), self.pooling,
                             self.normalize)
        if found.pooling == "server" and not self._warned:
            self._warned = True
            log.warning("selection_server_pooled", model=self.model, wanted=self.pooling,
                        norm=round(float(np.linalg.norm(found.vector)), 4),
                        hint="the endpoint answered one pooled vector: its pooling (and, "
                             "for llama.cpp, its L2 normalisation) is the server's; start "
                             "llama.cpp with --pooling none to have iterrefine pool")
        return found
