"""What a run cost, and what the whole input would cost: an estimate with its interval.

Money is tokens times each role's configured price per million tokens
(``[llm.ROLE] price_in_per_mtok`` / ``price_out_per_mtok``). A trial run
(``--sample N``, or ``--limit N``) measures what each of its items cost: the LLM
clients count requests and tokens per item (the unit of work they were made for), so
an item that was refined over three rounds weighs what it paid, and one kept as it
was weighs one call. The estimate for the whole input of ``N`` records is then the
survey estimate of a total from a simple random sample of ``n``:

    N × (mean cost per trial item) + the calls of no item (endpoint probes: not scaled)

with a 90% interval of ± t(0.95, n-1) × N × s / √n × √(1 - n/N), ``s`` the standard
deviation of the per-item costs. It holds for a random sample (``--sample``: every
record equally likely); ``--limit`` takes the head of the file, which is not one, so
its estimate says so and states no interval. The estimate is computed per quantity
(calls, prompt and completion tokens, money). benchmarks/trial_estimate.py measures
how often it lands within ±15% of a full run, and how often the interval covers it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from iterrefine.config import LLMRoleConfig

#: t quantiles at 0.95 (a two-sided 90% interval) for 1..30 degrees of freedom.
_T95 = (6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812, 1.796, 1.782,
        1.771, 1.761, 1.753, 1.746, 1.740, 1.734, 1.729, 1.725, 1.721, 1.717, 1.714, 1.711,
        1.708, 1.706, 1.703, 1.701, 1.699, 1.697)

#: Role → item id → (requests, prompt tokens, completion tokens), "" for calls of no item.
UsageByItem = Mapping[str, Mapping[str, tuple[int, int, int]]]

_QUANTITIES = ("calls", "prompt_tokens", "completion_tokens", "money")


def t95(df: int) -> float:
    """Student's t quantile at 0.95 (Cornish–Fisher expansion past 30 degrees of freedom)."""
    if df < 1:
        return math.inf
    if df <= len(_T95):
        return _T95[df - 1]
    z = 1.6448536
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def _priced(role: LLMRoleConfig | None) -> bool:
    return role is not None and (role.price_in_per_mtok is not None
                                 or role.price_out_per_mtok is not None)


def _money(role: LLMRoleConfig | None, prompt: int, completion: int) -> float:
    if role is None:
        return 0.0
    return (prompt * (role.price_in_per_mtok or 0.0)
            + completion * (role.price_out_per_mtok or 0.0)) / 1e6


def role_money(stats: Mapping[str, Any], role: LLMRoleConfig | None) -> float | None:
    """The role's spend, or None when it has no prices configured."""
    if not _priced(role):
        return None
    return _money(role, int(stats["prompt_tokens"]), int(stats["completion_tokens"]))


def cost_summary(
    llm: Mapping[str, Mapping[str, Any]],
    roles: Mapping[str, LLMRoleConfig],
    *,
    items_run: int,
    items_total: int | None,
    usage_by_item: UsageByItem | None = None,
    sampled: bool = True,
) -> dict[str, Any]:
    """Calls, tokens and money of a run (the summary's ``llm`` block), plus the estimate.

    ``items_total`` is the size of the whole input when the run took only part of it
    (else None): the result then has ``estimate_full_input``, from ``usage_by_item``
    when the clients counted it (else scaled from the totals, with no interval).
    ``sampled``: the trial's items were drawn at random (``--sample``), not the head.
    """
    per_role = {name: role_money(stats, roles.get(name)) for name, stats in llm.items()}
    priced = [money for money in per_role.values() if money is not None]
    run = {
        "calls": sum(int(stats["requests"]) for stats in llm.values()),
        "prompt_tokens": sum(int(stats["prompt_tokens"]) for stats in llm.values()),
        "completion_tokens": sum(int(stats["completion_tokens"]) for stats in llm.values()),
        "money": round(sum(priced), 6) if priced else None,
    }
    # Calls the response cache answered cost nothing and are not in calls/tokens above.
    cache_hits = sum(int(stats.get("cache_hits", 0)) for stats in llm.values())
    out: dict[str, Any] = {"run": {
        "items": items_run, **run, "cache_hits": cache_hits,
        "money_by_role": {name: None if m is None else round(m, 6) for name, m in per_role.items()},
    }}
    if items_total is not None and items_run > 0:
        estimate = (_from_items(usage_by_item, roles, run, items_run, items_total, sampled)
                    if usage_by_item is not None else _scaled(run, items_run, items_total))
        out["estimate_full_input"] = {
            "items": items_total, "trial_items": items_run,
            "basis": "sample" if sampled else "first_n", **estimate,
            # A trial answered partly from the cache under-counts what a cold run pays.
            "low_by_cache_hits": cache_hits > 0,
        }
    return out


def _scaled(run: Mapping[str, Any], n: int, total: int) -> dict[str, Any]:
    scale = total / n
    return {**{q: None if run[q] is None else _round(q, run[q] * scale) for q in _QUANTITIES},
            "interval_90": None}


def _from_items(
    usage: UsageByItem, roles: Mapping[str, LLMRoleConfig], run: Mapping[str, Any],
    n: int, total: int, sampled: bool,
) -> dict[str, Any]:
    """N × the per-item mean + the calls of no item, each with its 90% interval."""
    items: dict[str, list[float]] = {}
    for role, by_item in usage.items():
        for item_id, (calls, prompt, completion) in by_item.items():
            row = items.setdefault(item_id, [0.0, 0.0, 0.0, 0.0])
            row[0] += calls
            row[1] += prompt
            row[2] += completion
            row[3] += _money(roles.get(role), prompt, completion)
    overhead = items.pop("", [0.0, 0.0, 0.0, 0.0])
    # Trial items that paid nothing (dead-lettered at ingest, answered by the cache).
    rows = list(items.values()) + [[0.0] * 4] * max(0, n - len(items))
    estimate: dict[str, Any] = {}
    interval: dict[str, list[float] | None] = {}
    for k, quantity in enumerate(_QUANTITIES):
        if run[quantity] is None:  # money without prices
            estimate[quantity] = interval[quantity] = None
            continue
        values = [row[k] for row in rows]
        mean = sum(values) / len(values)
        point = total * mean + overhead[k]
        estimate[quantity] = _round(quantity, point)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0
        half = t95(len(values) - 1) * total * math.sqrt(var / len(values)
                                                        * max(0.0, 1 - len(values) / total))
        interval[quantity] = [_round(quantity, max(0.0, point - half)),
                              _round(quantity, point + half)] if math.isfinite(half) else None
    return {**estimate, "interval_90": interval if sampled else None,
            "fixed_calls": int(overhead[0]),
            "sample_for_15pct": _sample_for(0.15, [row[0] for row in rows], total)}


def _sample_for(margin: float, values: list[float], total: int) -> int | None:
    """About how many sampled items put the calls' 90% interval within ±``margin``."""
    mean = sum(values) / len(values)
    if len(values) < 2 or mean <= 0:
        return None
    cv = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) / mean
    n0 = (1.6448536 * cv / margin) ** 2
    return min(total, math.ceil(n0 / (1 + n0 / total)))  # a finite input needs fewer


def _round(quantity: str, value: float) -> float:
    return round(value, 2) if quantity == "money" else round(value)


def trial_drivers(summary: Mapping[str, Any]) -> dict[str, Any]:
    """What made the trial's items cost what they did: the share refined, rounds each."""
    outcomes = summary.get("outcomes", {})
    low = sum(int(outcomes.get(k, 0)) for k in ("refined", "refined_unconverged", "unrefined",
                                                 "dropped"))
    counts = [(int(r), int(c)) for kind in summary.get("rounds", {}).values()
              for r, c in kind.items()]
    refined = sum(c for _, c in counts)
    return {
        "refined_share": round(low / summary["items_in"], 3) if summary.get("items_in") else 0.0,
        "rounds_per_refined_item": round(sum(r * c for r, c in counts) / refined, 2)
        if refined else 0.0,
    }


def describe_cost(cost: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Rows for the summary table."""
    def line(part: Mapping[str, Any]) -> str:
        money = ("no prices configured" if part["money"] is None
                 else f"${part['money']:,.4f}")
        return (f"{part['calls']:,} calls, {part['prompt_tokens']:,}+"
                f"{part['completion_tokens']:,} tokens, {money}")
    rows = [("cost (this run)", line(cost["run"]))]
    estimate = cost.get("estimate_full_input")
    if estimate is None:
        return rows
    caveat = (f" (low: {cost['run']['cache_hits']:,} trial calls were cache hits)"
              if estimate.get("low_by_cache_hits") else "")
    rows.append((f"estimate, all {estimate['items']:,} items", line(estimate) + caveat))
    interval = estimate.get("interval_90")
    if interval is not None and interval.get("calls") is not None:
        money = interval.get("money")
        rows.append(("  90% interval", (
            f"{interval['calls'][0]:,}–{interval['calls'][1]:,} calls, "
            f"{interval['prompt_tokens'][0]:,}–{interval['prompt_tokens'][1]:,} prompt tokens"
            + ("" if money is None else f", ${money[0]:,.2f}–${money[1]:,.2f}"))))
    needed = estimate.get("sample_for_15pct")
    if interval is not None and needed is not None and needed > estimate["trial_items"]:
        rows.append(("  for ±15%", f"sample about {needed:,} items (items vary this much)"))
    if estimate.get("basis") == "first_n":
        rows.append(("  not a sample", (
            f"the first {estimate.get('trial_items', '?')} records may differ from the rest: "
            "use --sample N for an estimate with an interval")))
    drivers = estimate.get("trial")
    if drivers:
        rows.append(("  from the trial", (
            f"{drivers['refined_share']:.0%} of items refined, "
            f"{drivers['rounds_per_refined_item']} rounds each")))
    return rows
