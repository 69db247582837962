"""``async with`` for the process's long-lived async services.

LLM clients, the simulator and the metrics server all follow one shape: ``start()``
opens what they need, ``aclose()`` releases it (idempotent), and ``async with``
does both.
"""

from __future__ import annotations

from typing import Self


class AsyncService:
    """``async with service:`` awaits ``start()`` on entry and ``aclose()`` on exit."""

    async def start(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
