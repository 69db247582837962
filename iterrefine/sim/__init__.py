"""The LLM simulator behind ``iterrefine sim-llm``: an OpenAI-compatible test instrument.

Deterministic answers in the formats of docs/llm-contract.md, with configurable
latency, capacity and fault injection. Never a model: its responses say so.

``SimServer`` is imported on first use: the server pulls in aiohttp's web framework,
which ``iterrefine run`` against a real endpoint never needs. Its embeddings endpoint
imports numpy when first called: numpy is the optional ``selection`` part of
iterrefine, and without it that endpoint answers 501 naming it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from iterrefine.sim.config import SimConfig

if TYPE_CHECKING:
    from iterrefine.sim.answers import register_simulated_answer
    from iterrefine.sim.server import SimServer

__all__ = ["SimConfig", "SimServer", "register_simulated_answer"]


def __getattr__(name: str) -> Any:
    if name == "SimServer":
        from iterrefine.sim.server import SimServer

        return SimServer
    if name == "register_simulated_answer":
        from iterrefine.sim.answers import register_simulated_answer

        return register_simulated_answer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
