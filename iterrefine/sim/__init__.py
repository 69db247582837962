"""The LLM simulator behind ``iterrefine sim-llm``: an OpenAI-compatible test instrument.

Deterministic answers in the formats of docs/llm-contract.md, with configurable
latency, capacity and fault injection. Never a model: its responses say so.
"""

from iterrefine.sim.config import SimConfig
from iterrefine.sim.server import SimServer

__all__ = ["SimConfig", "SimServer"]
