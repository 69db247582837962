"""Knobs of the LLM simulator, as one frozen value (built by ``iterrefine sim-llm``)."""

from __future__ import annotations

import hashlib

import msgspec

from iterrefine.errors import ConfigError

#: Models listed by ``GET /v1/models``; any requested name is accepted and answered as
#: ``sim-<name>``.
DEFAULT_SIM_MODELS: tuple[str, ...] = ("sim-strong", "sim-backbone")


class SimConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How the simulator answers, how fast, and how it fails.

    Answers are a pure function of the item text and round (see docs/llm-contract.md);
    ``seed`` drives only latency jitter and fault injection.
    """

    #: Mean service time of one request once it is being served.
    latency_ms: float = 0.0
    #: Uniform jitter around the mean: the service time is ``latency_ms ± jitter_ms``.
    jitter_ms: float = 0.0
    #: Requests served at once (like a server's max batch); more wait in a FIFO queue.
    #: ``0`` serves everything at once.
    capacity: int = 64
    #: Share of items the judge scores as low quality (sent to refinement).
    low_share: float = 0.5
    #: Share of items the judge calls unusable (``Usable: no``).
    reject_share: float = 0.02
    #: Share of items the judge says involve no reasoning (the paper's task filter
    #: removed 20% of Dolly).
    non_reasoning_share: float = 0.2
    #: Planted structure of ``/v1/embeddings``: vectors of this many dimensions around
    #: ``embedding_clusters`` seeded centres (an item's cluster is a hash of its text).
    embedding_dim: int = 64
    embedding_clusters: int = 16
    #: Spread of a vector around its centre (the centres are unit vectors).
    embedding_noise: float = 0.15
    #: Answer one vector per token (llama.cpp does for some models) instead of one pooled.
    embedding_per_token: bool = False
    #: Probability that a revision loses its review in a given round.
    lose_prob: float = 0.5
    #: Share of the non-losing reviews answered ``Tie`` instead of the revised side.
    tie_share: float = 0.1
    #: Fault rates, each a probability per request (their sum is at most 1).
    fault_429: float = 0.0
    fault_500: float = 0.0
    fault_hang: float = 0.0
    fault_malformed: float = 0.0
    #: A reply cut at max_tokens (``finish_reason=length``), as real models give when the
    #: limit is too low: the ask layer re-asks it with more room.
    fault_truncated: float = 0.0
    #: A reply that loops until max_tokens (the answer, then a run of blank lines, as
    #: small models write): the loop guard keeps the answer and counts the loop.
    fault_looped: float = 0.0
    #: How long a hanging request sleeps before it is served (past any client timeout).
    hang_s: float = 120.0
    #: Value of ``Retry-After`` on simulated 429s.
    retry_after_s: float = 1.0
    #: Seed of the latency and fault random streams.
    seed: int = 0
    #: How many recent requests ``GET /requests`` keeps (a ring buffer).
    request_log_size: int = 1000
    #: Interval and length of the concurrency time series in ``GET /stats``.
    sample_interval_ms: float = 100.0
    series_size: int = 6000
    models: tuple[str, ...] = DEFAULT_SIM_MODELS
    #: Answer 404 "model does not exist" to a chat call naming a model not in ``models``,
    #: as OpenAI and vLLM do (by default any name is answered, like llama.cpp).
    strict_models: bool = False
    #: The ``response_format`` types served: ``json_schema`` (OpenAI form) and
    #: ``json_object`` (llama.cpp form, schema beside the type). Another type is a 400,
    #: so a simulator can stand in for a server that knows only one of them.
    structured_dialects: tuple[str, ...] = ("json_schema", "json_object")
    #: When set, ``/v1`` answers 401 to any other bearer key (to rehearse a wrong key).
    api_key: str | None = None

    def __post_init__(self) -> None:
        shares = {
            "low_share": self.low_share,
            "reject_share": self.reject_share,
            "lose_prob": self.lose_prob,
            "tie_share": self.tie_share,
            "non_reasoning_share": self.non_reasoning_share,
            "fault_429": self.fault_429,
            "fault_500": self.fault_500,
            "fault_hang": self.fault_hang,
            "fault_malformed": self.fault_malformed,
            "fault_truncated": self.fault_truncated,
            "fault_looped": self.fault_looped,
        }
        for name, value in shares.items():
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"sim: {name} must be between 0 and 1, got {value}")
        if self.fault_total > 1.0:
            raise ConfigError(
                f"sim: the fault rates add up to {self.fault_total:.3f}; they must be at most 1"
            )
        non_negative = {
            "latency_ms": self.latency_ms,
            "jitter_ms": self.jitter_ms,
            "capacity": self.capacity,
            "hang_s": self.hang_s,
            "retry_after_s": self.retry_after_s,
        }
        for name, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"sim: {name} must not be negative, got {value}")
        if self.jitter_ms > self.latency_ms:
            raise ConfigError(
                f"sim: jitter_ms ({self.jitter_ms}) must not exceed latency_ms ({self.latency_ms})"
            )
        if self.request_log_size < 1 or self.series_size < 1:
            raise ConfigError("sim: request_log_size and series_size must be at least 1")
        if self.embedding_dim < 1 or self.embedding_clusters < 1 or self.embedding_noise < 0:
            raise ConfigError("sim: embedding_dim and embedding_clusters must be at least 1, "
                              "embedding_noise not negative")
        if self.sample_interval_ms <= 0:
            raise ConfigError("sim: sample_interval_ms must be positive")

    def answers_identity(self) -> str:
        """The simulator as the response cache tells it apart: the knobs its answers
        depend on (not its port, latency or faults, whose answers are never kept)."""
        shaping = (self.low_share, self.reject_share, self.non_reasoning_share,
                   self.lose_prob, self.tie_share, self.embedding_dim,
                   self.embedding_clusters, self.embedding_noise, self.embedding_per_token)
        digest = hashlib.blake2b(msgspec.json.encode(shaping), digest_size=8).hexdigest()
        return f"iterrefine-simulator:{digest}"

    @property
    def fault_total(self) -> float:
        return (self.fault_429 + self.fault_500 + self.fault_hang + self.fault_malformed
                + self.fault_truncated + self.fault_looped)
