"""LLM access: one OpenAI-compatible client per role, with limits, retries and accounting."""

from iterrefine.llm._ratelimit import TokenBucket
from iterrefine.llm._roles import LLMRoles
from iterrefine.llm._wire import ChatResult, LLMStats
from iterrefine.llm.client import LLMClient

__all__ = ["ChatResult", "LLMClient", "LLMRoles", "LLMStats", "TokenBucket"]
