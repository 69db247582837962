"""A run's cost cap, kept before each call is sent rather than noticed after.

Every paid call reserves its worst case first: the prompt's estimated tokens at the
role's input price plus the whole completion limit (``max_tokens``) at its output
price. When a call ends, its reservation gives way to what it actually cost. A call
whose worst case fits beside what is spent but not beside what calls in flight hold
waits for them; one that would not fit even then is refused, and from then on every
call is (new work stops) and the run that owns the budget stops. So the spend stays
under the cap, up to the error of the prompt estimate (characters / 4), however many
calls are in flight at once, and ends within one call's worst case of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from iterrefine.config import LLMRoleConfig
from iterrefine.errors import CostCapReached


class Budget:
    """``max_cost`` for every role of a process, at each role's prices per million tokens."""

    def __init__(self, max_cost: float, roles: Mapping[str, LLMRoleConfig]) -> None:
        self.max_cost = max_cost
        self._prices = {name: (role.price_in_per_mtok or 0.0, role.price_out_per_mtok or 0.0)
                        for name, role in roles.items()}
        #: What finished calls cost, and the worst case of those in flight.
        self.spent = 0.0
        self.reserved = 0.0
        #: Set by the first call refused: the cap is reached and no call is sent after it.
        self.reached = False
        #: Set whenever a reservation is given back: waiting calls look again.
        self._freed = asyncio.Event()

    def cost(self, role: str, prompt_tokens: int, completion_tokens: int) -> float:
        price_in, price_out = self._prices.get(role, (0.0, 0.0))
        return (prompt_tokens * price_in + completion_tokens * price_out) / 1e6

    async def reserve(self, role: str, prompt_tokens: int, completion_limit: int) -> float:
        """Hold the call's worst case (waiting for calls in flight to settle if it must),
        or raise :class:`CostCapReached`, and keep refusing from then on."""
        worst = self.cost(role, prompt_tokens, completion_limit)
        while True:
            if self.reached or self.spent + worst > self.max_cost:
                self.reached = True
                self._freed.set()  # the waiting calls are refused too
                raise CostCapReached(
                    f"the cost cap {self.max_cost:g} is reached ({self.spent:.4f} spent, "
                    f"{self.reserved:.4f} held by calls in flight): no new call is sent")
            if self.spent + self.reserved + worst <= self.max_cost:
                self.reserved += worst
                return worst
            self._freed.clear()
            await self._freed.wait()

    def settle(self, role: str, reservation: float, prompt_tokens: int,
               completion_tokens: int) -> None:
        """A call ended: its reservation gives way to its cost (0 tokens if it failed)."""
        self.reserved = max(0.0, self.reserved - reservation)
        self.spent += self.cost(role, prompt_tokens, completion_tokens)
        self._freed.set()
