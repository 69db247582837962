"""A per-role circuit breaker: an endpoint outage pauses the work, it never dead-letters it.

A broken endpoint is an operational fault, not bad data. When a role's endpoint is
down (refused or dropped connections, timeouts, a run of 5xx answers) or turns the
key away (401/403), its :class:`Circuit` opens: every call of that role waits in
:meth:`Circuit.wait_closed` instead of spending its retry budget and ending in the
DLQ. The stages that call the role take no new messages meanwhile
(:attr:`iterrefine.runtime.Stage.hold`, wired in :mod:`iterrefine.app.pipeline`) and keep
their group membership the way the runner does whenever its window is full. One
probe per ``probe_interval_s`` asks whether the endpoint is back (a one-token
completion, the call that was failing; ``GET /models`` for a rejected key); the first
good answer closes the circuit and the waiting calls go on with their retry budget
intact.

    closed --(circuit_failures outage failures in a row, or one 401/403)--> open
    open   --(a probe answers)--> closed

``on_open`` lets ``iterrefine run`` stop at once on a rejected key (nothing a probe
can fix without a restart): it calls :meth:`Circuit.give_up`, and the waiting calls
raise :class:`LLMUnavailable`, which the runtime leaves uncommitted rather than
dead-lettering. Long-running workers keep probing. ``failures_to_open=0`` turns the
circuit off: failures then reach the caller as errors, as without a breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog
from prometheus_client import Gauge

from iterrefine.errors import LLMUnavailable

log = structlog.get_logger("iterrefine.llm")

#: Metric statuses (see :mod:`iterrefine.llm._failures`) that say the endpoint is down.
OUTAGE_STATUSES = frozenset({"connection", "timeout", "500", "502", "503", "504"})
#: Statuses that say the endpoint refuses our key: no request of this role can succeed.
AUTH_STATUSES = frozenset({"401", "403"})

#: Answers whether the endpoint is back: ``None`` when it is, else what is wrong.
Probe = Callable[[], Awaitable[str | None]]


def is_outage(status: str) -> bool:
    return status in OUTAGE_STATUSES or status in AUTH_STATUSES or (
        status.isdigit() and int(status) >= 500
    )


class Circuit:
    """The open/closed state of one role's endpoint, with its probe loop."""

    def __init__(
        self,
        role: str,
        where: str,
        probe: Probe,
        *,
        failures_to_open: int = 5,
        probe_interval_s: float = 5.0,
        gauge: Gauge | None = None,
        on_open: Callable[[Circuit], None] | None = None,
    ) -> None:
        self.role = role
        self._where = where
        self._probe = probe
        self._failures_to_open = failures_to_open
        self._probe_interval_s = probe_interval_s
        self._gauge = gauge
        self._on_open = on_open
        self._failures = 0
        self._closed = asyncio.Event()
        self._closed.set()
        self._prober: asyncio.Task[None] | None = None
        #: Why the circuit is open (``"auth"``/``"outage"``), None when closed.
        self.open_reason: str | None = None
        self.opened = 0
        self._gave_up: LLMUnavailable | None = None

    @property
    def is_open(self) -> bool:
        return not self._closed.is_set() or self._gave_up is not None

    async def wait_closed(self) -> None:
        """Return when the endpoint may be called; raise LLMUnavailable once given up."""
        if not self._closed.is_set():
            await self._closed.wait()
        if self._gave_up is not None:
            raise self._gave_up

    def give_up(self, why: str) -> None:
        """Stop probing; every waiting and later call raises :class:`LLMUnavailable`."""
        self._gave_up = LLMUnavailable(f"{self._where}: {why}")
        if self._prober is not None:
            self._prober.cancel()
        self._closed.set()

    def succeeded(self) -> None:
        self._failures = 0

    def failed(self, status: str, error: BaseException) -> None:
        """Count a failed request; open the circuit when it says the endpoint is down."""
        if not self._failures_to_open:
            return
        if status in AUTH_STATUSES:
            self._open("auth", status, error)
        elif is_outage(status):
            self._failures += 1
            if self._failures >= self._failures_to_open:
                self._open("outage", status, error)
        else:
            self._failures = 0  # the endpoint answered: a bad request is not an outage

    def _open(self, reason: str, status: str, error: BaseException) -> None:
        if self.is_open:
            return
        self.open_reason = reason
        self.opened += 1
        self._closed.clear()
        if self._gauge is not None:
            self._gauge.set(1)
        fix = (
            "the endpoint rejects the API key: fix api_key_env (or the key it names) and "
            "restart" if reason == "auth" else
            "the endpoint is unreachable or failing: check that the LLM server at base_url is "
            "running and healthy"
        )
        log.error("llm_circuit_open", role=self.role, endpoint=self._where, status=status,
                  error=str(error)[:300], fix=fix, action="pausing this role's calls; "
                  "items wait (none are dead-lettered) and resume when a probe succeeds")
        self._prober = asyncio.create_task(self._probe_until_up(), name=f"probe-{self.role}")
        if self._on_open is not None:
            self._on_open(self)

    async def _probe_until_up(self) -> None:
        probes = 0
        while True:
            await asyncio.sleep(self._probe_interval_s)
            probes += 1
            try:
                problem = await self._probe()
            except Exception as exc:  # a probe must never end the loop: the calls wait on it
                problem = repr(exc)
            if problem is None:
                break
            log.warning("llm_probe_failed", role=self.role, probes=probes, problem=problem[:300])
        self._failures = 0
        self.open_reason = None
        if self._gauge is not None:
            self._gauge.set(0)
        log.info("llm_circuit_closed", role=self.role, endpoint=self._where, probes=probes)
        self._closed.set()

    async def aclose(self) -> None:
        prober, self._prober = self._prober, None
        if prober is not None and not prober.done():
            prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prober
