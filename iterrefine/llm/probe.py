"""Tell whether an endpoint is iterrefine's simulator, so its output is marked simulated."""

from __future__ import annotations

import httpx2

SIMULATOR_OWNER = "iterrefine-simulator"


async def is_simulator(base_url: str, *, timeout_s: float = 5.0) -> bool:
    """True if ``GET {base_url}/models`` lists models owned by the simulator."""
    try:
        async with httpx2.AsyncClient(timeout=timeout_s) as client:
            response = await client.get(base_url.rstrip("/") + "/models")
            models = response.json().get("data", [])
    except (httpx2.HTTPError, ValueError, AttributeError):
        return False  # not ours, or not answering yet: the real calls will say more
    return any(isinstance(m, dict) and m.get("owned_by") == SIMULATOR_OWNER for m in models)
