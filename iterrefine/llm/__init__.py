"""LLM access: one OpenAI-compatible client per role, with limits, retries and accounting."""

from iterrefine.llm.client import LLMClient
from iterrefine.llm.ratelimit import TokenBucket
from iterrefine.llm.roles import LLMRoles
from iterrefine.llm.wire import ChatResult, LLMStats

__all__ = ["ChatResult", "LLMClient", "LLMRoles", "LLMStats", "TokenBucket"]
