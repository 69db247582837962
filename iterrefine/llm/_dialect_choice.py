"""A role's structured-output dialect over its life: configured, probed, or guessed meanwhile.

The probe itself (what it sends, how it reads the answers) is :mod:`iterrefine.llm._dialect`;
this holds the decision: when to probe, when to probe again, and what calls send while
the first probe is still out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from iterrefine.config import Dialect, StructuredOutput
from iterrefine.llm import _dialect as dialects

#: How long an undecided role (its probe could not reach the server) waits to probe again.
PROBE_RETRY_S = 10.0


class DialectChoice:
    """The dialect of one role: the configured one, or for ``auto`` what the probe found."""

    def __init__(self, setting: StructuredOutput | bool, send: dialects.ProbeSend, *,
                 role: str, model: str) -> None:
        setting = dialects.configured(setting)
        self._send = send
        self._role = role
        self._model = model
        self._decided: Dialect | None = None if setting == "auto" else setting
        self._lock = asyncio.Lock()
        self._next_probe = 0.0  # monotonic time before which an undecided role skips probing
        self._speculating = setting == "auto"
        self._first_probe: asyncio.Task[Dialect] | None = None

    @property
    def current(self) -> str:
        """The dialect in use, or ``auto`` while the probe has not decided yet."""
        return self._decided or "auto"

    def speculative(self) -> Dialect | None:
        """While the role's first probe is out: the dialect to send meanwhile, else None.

        The first structured call starts the probe instead of waiting a round trip for
        it: calls go out in the probe's first dialect at once. Where the server enforces
        it (OpenAI, vLLM) that is the answer the probe finds; where the server ignores it,
        the parsers read free text anyway; a server that refuses it (HTTP 400/500) costs
        one unpaid failed request per call, which is then sent in the probed dialect.
        """
        if not self._speculating or self._decided is not None:
            return None
        if self._first_probe is None:
            self._first_probe = asyncio.create_task(self.decide())
        # Over once a probe has answered, here or through decide() (which can run first
        # when the first call finished without ever yielding to the task it started).
        if self._first_probe.done() or self._next_probe:
            self._speculating = False
            return None
        return dialects.PROBE_ORDER[0]

    async def decide(self) -> Dialect:
        """The dialect to send; ``auto`` probes the endpoint once.

        An inconclusive probe (server unreachable) answers ``off`` for now; the role
        probes again at a call :data:`PROBE_RETRY_S` later (not at every call, which
        would queue one probe per waiting request behind a dead server).
        """
        if self._decided is not None:
            return self._decided
        async with self._lock:
            if self._decided is None and time.monotonic() >= self._next_probe:
                self._decided = await dialects.probe_dialect(
                    self._send, role=self._role, model=self._model)
                self._next_probe = time.monotonic() + PROBE_RETRY_S
            return self._decided or "off"

    async def aclose(self) -> None:
        """Cancel a first probe still out (the client is closing)."""
        probe = self._first_probe
        if probe is not None and not probe.done():
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
