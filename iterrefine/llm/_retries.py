"""The one retry loop of an LLM role: chat completions and raw posts alike.

openai's own retries are off (:mod:`iterrefine.llm.client`), so this is where a
failed request is tried again: at most ``max_retries + 1`` attempts while the
endpoint is up, with jittered exponential backoff that never comes back before a
server's ``Retry-After`` (:class:`iterrefine.retry.Backoff`). A failure that opens
(or meets) the role's open circuit is not counted: the call waits for the circuit
to close and goes on. When the budget runs out the error is raised as
:class:`LLMRetriesExhausted`, which the runtime does not retry again, so one call
never costs more than its budget (handler retries replay the calls that had
succeeded from the response cache).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from iterrefine.config import LLMRoleConfig
from iterrefine.errors import IterrefineError, LLMRetriesExhausted
from iterrefine.llm.circuit import Circuit
from iterrefine.retry import Backoff

T = TypeVar("T")

log = structlog.get_logger("iterrefine.llm")


class Retries:
    """Retries the calls of one role and counts the retries (``LLMStats.retries``)."""

    def __init__(self, role: str, config: LLMRoleConfig, backoff: Backoff) -> None:
        self._role = role
        self._model = config.model
        self._budget = config.max_retries + 1
        self._backoff = backoff
        self.count = 0

    async def call(
        self, attempt: Callable[[], Awaitable[T]], *, circuit: Circuit | None = None,
    ) -> tuple[T, int]:
        """``attempt()`` until it succeeds: its result and the attempts it took.

        With a ``circuit``, each attempt waits while it is open, and a failure while it
        is open does not count against the budget (see the module docstring).
        """
        attempts = 0
        while True:
            if circuit is not None:
                await circuit.wait_closed()
            try:
                return await attempt(), attempts + 1
            except IterrefineError as exc:
                if circuit is not None and circuit.is_open:
                    continue  # an outage, not this call's fault: wait for the endpoint
                attempts += 1
                if not exc.retriable or attempts >= self._budget:
                    log.warning(
                        "llm_failed", role=self._role, model=self._model, attempts=attempts,
                        retriable=exc.retriable, error=str(exc),
                    )
                    if exc.retriable:
                        raise LLMRetriesExhausted(
                            f"{exc} (after {attempts} attempts; raise max_retries for this "
                            "role if the endpoint needs more patience)") from exc
                    raise
                delay = self._backoff.delay_s(attempts - 1, getattr(exc, "retry_after_s", None))
                self.count += 1
                log.warning(
                    "llm_retry", role=self._role, model=self._model, retry=attempts,
                    delay_s=round(delay, 3), error=str(exc),
                )
                await asyncio.sleep(delay)
