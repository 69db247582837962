"""All configured LLM roles of a process, one :class:`LLMClient` each."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator

import httpx2
import structlog

from iterrefine.config import Config
from iterrefine.lifecycle import AsyncService
from iterrefine.llm._wire import LLMStats
from iterrefine.llm.budget import Budget
from iterrefine.llm.cache import CacheMode, ResponseCache
from iterrefine.llm.circuit import Circuit
from iterrefine.llm.client import LLMClient
from iterrefine.observe.metrics import Metrics
from iterrefine.retry import Backoff

log = structlog.get_logger("iterrefine.llm")


def _open_cache(config: Config, mode: CacheMode) -> ResponseCache | None:
    """The cache file, or None (with a warning) where it cannot be written: the cache
    saves money, but a worker on a read-only filesystem must still work."""
    path = config.cache_path()
    try:
        return ResponseCache(path, mode=mode)
    except (OSError, sqlite3.Error) as exc:
        log.warning("llm_cache_unavailable", path=str(path), error=str(exc),
                    fix="set [cache] path (or --data-dir) to a writable place")
        return None


class LLMRoles(AsyncService):
    """``async with LLMRoles(config) as roles: await roles["strong"].chat(...)``.

    Every role in ``config.llm`` gets its own client (endpoint, key, pool, limits).
    Asking for a role that is not configured raises :class:`ConfigError` saying how
    to configure it. A shared ``http_client`` (tests) stays owned by the caller.
    With ``config.cache.mode`` on or refresh, the roles share one response cache file.
    ``on_circuit_open(circuit)`` hears when a role's endpoint goes down.
    """

    def __init__(
        self,
        config: Config,
        *,
        metrics: Metrics | None = None,
        http_client: httpx2.AsyncClient | None = None,
        backoff: Backoff | None = None,
        on_circuit_open: Callable[[Circuit], None] | None = None,
    ) -> None:
        self._config = config
        #: ``config.max_cost``: every role's calls reserve their worst case under it.
        self.budget = None if config.max_cost is None else Budget(config.max_cost, config.llm)
        mode = config.cache.mode
        self.cache = None if mode == "off" else _open_cache(config, mode)
        try:
            self._clients = {
                role: LLMClient(
                    role, role_config, metrics=metrics, http_client=http_client,
                    backoff=backoff, cache=self.cache, on_circuit_open=on_circuit_open,
                    budget=self.budget,
                )
                for role, role_config in config.llm.items()
            }
        except BaseException:  # a missing key: do not leave the cache file open
            if self.cache is not None:
                self.cache.close()
            raise

    async def start(self) -> None:
        try:
            for client in self._clients.values():
                await client.start()
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self._clients.values()))
        cache, self.cache = self.cache, None
        if cache is not None:
            cache.close()

    def __getitem__(self, role: str) -> LLMClient:
        self._config.role(role)  # raises ConfigError with the fix when missing
        return self._clients[role]

    def __contains__(self, role: object) -> bool:
        return role in self._clients

    def __iter__(self) -> Iterator[str]:
        return iter(self._clients)

    def keep_usage_by_item(self) -> None:
        """Every role counts its requests and tokens per item from now on."""
        for client in self._clients.values():
            client.keep_usage_by_item()

    def usage_by_item(self) -> dict[str, dict[str, tuple[int, int, int]]]:
        """Role → item id → (requests, prompt tokens, completion tokens)."""
        return {role: client.usage_by_item() for role, client in self._clients.items()}

    def stats(self) -> dict[str, LLMStats]:
        return {role: client.stats() for role, client in self._clients.items()}
