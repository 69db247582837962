"""LLM access: one OpenAI-compatible client per role, with limits, retries and accounting."""

from iterrefine.llm.client import ChatResult, LLMClient, LLMStats
from iterrefine.llm.ratelimit import TokenBucket
from iterrefine.llm.roles import LLMRoles

__all__ = ["ChatResult", "LLMClient", "LLMRoles", "LLMStats", "TokenBucket"]
