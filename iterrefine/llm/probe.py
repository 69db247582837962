"""Tell whether an endpoint is iterrefine's simulator, so its output is marked simulated."""

from __future__ import annotations

import asyncio

import httpx2
import structlog

SIMULATOR_OWNER = "iterrefine-simulator"
log = structlog.get_logger("iterrefine.llm")


async def is_simulator(base_url: str, *, timeout_s: float = 5.0, wait_s: float = 15.0) -> bool:
    """True if ``GET {base_url}/models`` lists models owned by the simulator.

    A worker may start before its LLM server: keep asking for up to ``wait_s`` so
    that simulated output is not mislabelled as real just because the probe was early.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    async with httpx2.AsyncClient(timeout=timeout_s) as client:
        while True:
            try:
                response = await client.get(base_url.rstrip("/") + "/models")
                models = response.json().get("data", [])
                return any(
                    isinstance(m, dict) and m.get("owned_by") == SIMULATOR_OWNER for m in models
                )
            except (httpx2.HTTPError, ValueError, AttributeError) as exc:
                if loop.time() >= deadline:
                    log.warning("llm_probe_failed", base_url=base_url, error=type(exc).__name__)
                    return False
                await asyncio.sleep(0.5)
