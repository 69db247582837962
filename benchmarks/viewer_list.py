"""The viewer's list page at 100,000 items: page time per query, before and after.

``python benchmarks/viewer_list.py [--items N] [--repeats R] [--before REV]`` writes N
synthetic items as an export (30% refined, 10% rejected, 1% dead letters, all
simulated), loads them as ``iterrefine view --from`` does, serves them with the real
viewer and times each page over HTTP (R requests, median and max; a query's first
request, which scans, apart from the repeats, which hit the cache). The contender
``before`` renders the same queries with the list page of commit REV (which filters
every story on every request and had no search), in the same run.

Floor: every page must hold the number of matching items computed independently from
the generated data (a page that finds nothing, or everything, fails). Ceiling: every
page of the new list ≤ ``--ceiling-ms`` (median). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
from harness import loadavg, machine  # benchmarks/ is sys.path[0] for a script

from iterrefine.io.export import Terminal
from iterrefine.io.outputs import write_outputs
from iterrefine.item.model import Provenance, Round
from iterrefine.item.records import item_from_raw
from iterrefine.tools.story import Story, stories_from_export
from iterrefine.tools.viewer import Viewer

ROOT = Path(__file__).resolve().parents[1]
_WORDS = ("river", "proof", "budget", "poem", "enzyme", "orbit", "ledger", "violin")


def _kind(n: int) -> str:
    return "dlq" if n % 100 == 99 else "rejected" if n % 10 == 3 else (
        "refined" if n % 10 in (0, 4, 7) else "high")


def _terminals(count: int) -> Iterator[Terminal]:
    for n in range(count):
        word = _WORDS[n % len(_WORDS)]
        raw = {"id": f"item-{n:06d}", "instruction": f"Explain the {word} in case {n} and "
               "say why it matters, with an example.", "output": f"Because {n}. " * 20}
        kind = _kind(n)
        if kind == "dlq":
            yield Terminal(id=raw["id"], outcome="dlq", revision=0, timestamp_ms=0, item=None,
                           meta={"reason": "not_json"}, raw=b"{not json")
            continue
        item = item_from_raw(json.dumps(raw).encode()).with_changes(
            provenance=Provenance(simulated=True), status=kind)
        if kind == "refined":
            revised = f"Explain step by step how the {word} of case {n} works (marker{n})."
            item = item.with_changes(instruction=revised, round=1, rounds=(
                Round(number=1, instruction=revised, input="", feedback=None,
                      backbone_answer="fine", winner="B", explanation="clearer"),))
        outcome = "rejected" if kind == "rejected" else "curated"
        yield Terminal(id=item.id, outcome=outcome, revision=0,  # type: ignore[arg-type]
                       timestamp_ms=0, item=item, meta={}, raw=b"")


def _queries(count: int) -> dict[str, tuple[dict[str, str], int]]:
    """Name → (query parameters, matching items, counted from the generator's rules)."""
    kinds = [_kind(n) for n in range(count)]
    refined = kinds.count("refined")
    marker = sum(1 for n, k in enumerate(kinds) if k == "refined" and f"marker{n}".startswith(
        "marker77"))
    budget = sum(1 for n, k in enumerate(kinds) if k != "dlq" and _WORDS[n % 8] == "budget")
    return {
        "first page": ({}, count),
        "deep page": ({"page": str(count // 200)}, count),
        "status filter": ({"status": "refined"}, refined),
        "search, rare": ({"q": "MARKER77"}, marker),
        "search, common": ({"q": "budget"}, budget),
        "search + filter, page 3": ({"q": "proof", "status": "rejected", "page": "2"},
                                    sum(1 for n, k in enumerate(kinds)
                                        if k == "rejected" and _WORDS[n % 8] == "proof")),
    }


def _count_on(page: str) -> int:
    found = re.search(r"— (\d+) of \d+ items", page)
    assert found is not None, "no count on the page"
    return int(found.group(1))


async def _time_new(url: str, params: dict[str, str], repeats: int) -> dict[str, Any]:
    times = []
    async with aiohttp.ClientSession() as http:
        for _ in range(repeats + 1):
            started = time.perf_counter()
            async with http.get(url, params=params) as response:
                page = await response.text()
            times.append((time.perf_counter() - started) * 1000)
    return {"first_ms": round(times[0], 2), "median_ms": round(statistics.median(times[1:]), 2),
            "max_ms": round(max(times[1:]), 2), "count": _count_on(page), "bytes": len(page)}


def _old_list_page(ref: str) -> Callable[..., str] | None:
    """``list_page`` of ``ref``'s viewer (stories, filters, page, source), or None."""
    shown = subprocess.run(["git", "-C", str(ROOT), "show",
                            f"{ref}:iterrefine/tools/viewer/_pages.py"],
                           capture_output=True, text=True, check=False)
    if shown.returncode != 0:
        return None
    module = types.ModuleType("viewer_pages_before")
    exec(compile(shown.stdout, f"{ref}:_pages.py", "exec"), module.__dict__)
    function: Callable[..., str] = module.list_page
    return function


def _time_old(list_page: Callable[..., str], stories: list[Story], params: dict[str, str],
              repeats: int) -> dict[str, Any] | None:
    if "q" in params:
        return None  # it had no search
    filters = {k: v for k, v in params.items() if k != "page"}
    number = int(params.get("page", "0"))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        page = list_page(stories, filters, number, "bench")
        times.append((time.perf_counter() - started) * 1000)
    return {"median_ms": round(statistics.median(times), 2), "count": _count_on(page)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before", default="9d3eeca", help="commit of the old list page")
    parser.add_argument("--ceiling-ms", type=float, default=250.0)
    args = parser.parse_args()
    load_before = loadavg()
    queries = _queries(args.items)
    with tempfile.TemporaryDirectory(prefix="iterrefine-viewer-") as tmp:
        started = time.perf_counter()
        paths, counts = write_outputs(_terminals(args.items), Path(tmp) / "out.jsonl")
        write_s = time.perf_counter() - started
        started = time.perf_counter()
        stories = list(stories_from_export(paths.curated))
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        async with Viewer(stories, source="bench") as viewer:
            index_s = time.perf_counter() - started
            new = {name: await _time_new(viewer.url, params, args.repeats)
                   for name, (params, _) in queries.items()}
    old_page = _old_list_page(args.before)
    before = {name: _time_old(old_page, stories, params, args.repeats)
              for name, (params, _) in queries.items()} if old_page else {}
    checks = {f"{name}: count": new[name]["count"] == expected > 0
              for name, (_, expected) in queries.items()}
    checks.update({f"{name}: first and median ≤ {args.ceiling_ms:g} ms":
                   max(new[name]["first_ms"], new[name]["median_ms"]) <= args.ceiling_ms
                   for name in queries})
    checks.update({f"{name}: before's count": row["count"] == queries[name][1]
                   for name, row in before.items() if row is not None})
    print(json.dumps({
        "benchmark": "viewer_list",
        "items": args.items, "repeats": args.repeats, "exported": counts,
        "setup_s": {"write_export": round(write_s, 2), "load_stories": round(load_s, 2),
                    "start_viewer_and_index": round(index_s, 2)},
        "page_ms": {"after": new, f"before ({args.before})": before},
        "checks": checks, "passed": all(checks.values()),
        "machine": machine(), "load_before": load_before, "load_after": loadavg(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
