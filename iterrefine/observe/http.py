"""The worker's HTTP endpoint: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz``.

Served from the worker's own event loop on purpose: if the loop is stuck,
``/healthz`` stops answering and Kubernetes restarts the pod.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from iterrefine.lifecycle import AsyncService


class MetricsServer(AsyncService):
    """``async with MetricsServer(registry, port, ready=...)``: serve until the block ends."""

    def __init__(
        self,
        registry: CollectorRegistry,
        port: int,
        *,
        # Loopback unless told otherwise: the endpoint has no authentication. Containers
        # pass 0.0.0.0 (``--metrics-host``) so that Prometheus can scrape them.
        host: str = "127.0.0.1",
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self._registry = registry
        self._port = port
        self._host = host
        self._ready = ready
        self._runner: web.AppRunner | None = None

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _request: web.Request) -> web.Response:
        if self._ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready: waiting for partition assignment\n")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        self._port = int(self._runner.addresses[0][1])  # the OS's pick when asked for 0

    @property
    def host(self) -> str:
        """The address served on (after start(): the one the socket is bound to)."""
        if self._runner is not None and self._runner.addresses:
            return str(self._runner.addresses[0][0])
        return self._host

    @property
    def port(self) -> int:
        """The port served on (the one the OS picked, after start(), when asked for 0)."""
        return self._port

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

