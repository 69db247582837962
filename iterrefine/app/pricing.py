"""What a run cost, and what the whole input would cost at the same rate.

Money is tokens times each role's configured price per million tokens
(``[llm.ROLE] price_in_per_mtok`` / ``price_out_per_mtok``). A trial run
(``--limit``/``--sample``) measures calls and tokens per item; scaled by the
input's record count, that is the estimate for running all of it. Items differ,
so the estimate is as good as the trial is representative (``--sample`` draws
uniformly, ``--limit`` takes the head of the file).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from iterrefine.config import LLMRoleConfig


def role_money(stats: Mapping[str, Any], role: LLMRoleConfig | None) -> float | None:
    """The role's spend, or None when it has no prices configured."""
    if role is None or (role.price_in_per_mtok is None and role.price_out_per_mtok is None):
        return None
    return (int(stats["prompt_tokens"]) * (role.price_in_per_mtok or 0.0)
            + int(stats["completion_tokens"]) * (role.price_out_per_mtok or 0.0)) / 1e6


def cost_summary(
    llm: Mapping[str, Mapping[str, Any]],
    roles: Mapping[str, LLMRoleConfig],
    *,
    items_run: int,
    items_total: int | None,
) -> dict[str, Any]:
    """Calls, tokens and money of a run (the summary's ``llm`` block), plus the estimate.

    ``items_total`` is the size of the whole input when the run took only part of it
    (else None): the result then has ``estimate_full_input`` scaled per item.
    """
    per_role = {name: role_money(stats, roles.get(name)) for name, stats in llm.items()}
    priced = [money for money in per_role.values() if money is not None]
    calls = sum(int(stats["requests"]) for stats in llm.values())
    prompt = sum(int(stats["prompt_tokens"]) for stats in llm.values())
    completion = sum(int(stats["completion_tokens"]) for stats in llm.values())
    # Calls the response cache answered cost nothing and are not in calls/tokens above.
    cache_hits = sum(int(stats.get("cache_hits", 0)) for stats in llm.values())
    money = round(sum(priced), 6) if priced else None
    out: dict[str, Any] = {"run": {
        "items": items_run, "calls": calls, "prompt_tokens": prompt,
        "completion_tokens": completion, "money": money, "cache_hits": cache_hits,
        "money_by_role": {name: None if m is None else round(m, 6) for name, m in per_role.items()},
    }}
    if items_total is not None and items_run > 0:
        scale = items_total / items_run
        out["estimate_full_input"] = {
            "items": items_total,
            "calls": round(calls * scale),
            "prompt_tokens": round(prompt * scale),
            "completion_tokens": round(completion * scale),
            "money": None if money is None else round(money * scale, 2),
            # A trial answered partly from the cache under-counts what a cold run pays.
            "low_by_cache_hits": cache_hits > 0,
        }
    return out


def describe_cost(cost: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Rows for the summary table."""
    def line(part: Mapping[str, Any]) -> str:
        money = ("no prices configured" if part["money"] is None
                 else f"${part['money']:,.4f}")
        return (f"{part['calls']:,} calls, {part['prompt_tokens']:,}+"
                f"{part['completion_tokens']:,} tokens, {money}")
    rows = [("cost (this run)", line(cost["run"]))]
    estimate = cost.get("estimate_full_input")
    if estimate is not None:
        caveat = (f" (low: {cost['run']['cache_hits']:,} trial calls were cache hits)"
                  if estimate.get("low_by_cache_hits") else "")
        rows.append((f"estimate, all {estimate['items']:,} items", line(estimate) + caveat))
    return rows
