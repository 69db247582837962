"""Where a worker's CPU goes: py-spy samples grouped by the component that spent them.

``python benchmarks/cpu_profile.py FILE.txt`` reads py-spy's raw (collapsed) output
(``py-spy record -f raw -o FILE.txt -- python ...``; ``run.py --profile`` records one
per scenario) and prints, per component, its share of the samples. A sample counts
for the innermost frame that is not generic plumbing (asyncio, contextlib, the
importlib machinery...), so time that aiohttp spends inside asyncio's transport
counts as the LLM client's, and bare event-loop time as ``event loop``.

Components are matched on the frame's file path, most specific first.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

#: (component, path fragments), first match wins, checked from the innermost frame out.
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("startup (imports)", ("<frozen importlib", "importlib/")),
    ("llm client (iterrefine/llm/client.py)", ("iterrefine/llm/client.py",
                                               "iterrefine/llm/_failures.py",
                                               "iterrefine/llm/_ratelimit.py")),
    ("openai sdk (incl. pydantic)", ("openai/", "pydantic/", "pydantic_core/",
                                     "typing_extensions.py")),
    ("http (httpx2, aiohttp)", ("httpx2/", "aiohttp/", "yarl/", "multidict/", "h11/",
                                "httpcore/", "anyio/", "aiohappyeyeballs/", "propcache/",
                                "frozenlist/", "sniffio/")),
    ("prompts + parsing + ask", ("iterrefine/tasks/prompts/", "iterrefine/tasks/parsing/",
                                 "iterrefine/tasks/ask.py")),
    ("stage handlers (consumers/)", ("consumers/",)),
    ("kafka client (aiokafka)", ("aiokafka/", "kafka/")),
    ("runtime (iterrefine/runtime)", ("iterrefine/runtime/", "iterrefine/retry.py",
                                      "iterrefine/runtime/serve.py")),
    ("item model (msgspec)", ("iterrefine/item/model.py", "msgspec/")),
    ("logging (structlog)", ("structlog/", "iterrefine/observe/logging.py")),
    ("metrics (prometheus_client)", ("prometheus_client/", "iterrefine/observe/metrics.py")),
    ("terminal watcher / export", ("iterrefine/io/watch.py", "iterrefine/io/export.py")),
    ("benchmark harness", ("benchmarks/",)),
)
#: Where the event loop hands control to a callback: a sample with nothing but
#: generic frames inside it is the event loop's own time, not its caller's.
LOOP_BOUNDARY = ("Handle._run (", "BaseEventLoop._run_once (", "BaseEventLoop.run_forever (")
#: Innermost frames of threads that wait for work: py-spy may sample them as active
#: (the executor behind loop.getaddrinfo), but /proc shows they use no CPU.
IDLE_LEAVES = ("_worker (concurrent/futures/thread.py", "wait (threading.py")
#: Frames that only carry work for someone further out in the stack.
GENERIC = ("asyncio/", "selectors.py", "contextlib.py", "threading.py", "functools.py",
           "typing.py", "copy.py", "weakref.py", "abc.py", "enum.py", "dataclasses.py",
           "socket.py", "ssl.py", "json/", "re/", "_weakrefset.py", "random.py", "uuid.py",
           "email/", "http/", "urllib/", "base64.py", "collections/", "inspect.py")


def component_of(frames: list[str]) -> str:
    """The component charged for one sample (frames from the outermost to the innermost)."""
    for frame in reversed(frames):
        if any(boundary in frame for boundary in LOOP_BOUNDARY):
            break  # only asyncio inside this callback: the loop's own bookkeeping
        for name, fragments in COMPONENTS:
            if any(f in frame for f in fragments):
                return name
        if any(g in frame for g in GENERIC):
            continue
        return "other: " + frame.split(" (", 1)[-1].rstrip(")").rsplit(":", 1)[0]
    return "event loop (asyncio, selectors)"


def breakdown(path: Path, *, top_other: int = 5) -> dict[str, Any]:
    """Shares of the samples in py-spy raw output ``path``, by component."""
    counts: Counter[str] = Counter()
    total = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        frames = [f for f in stack.split(";")
                  if not f.startswith(("process ", "thread ")) and f.strip()]
        if frames and any(wait in frames[-1] for wait in IDLE_LEAVES):
            idle += int(count_s)
            continue
        counts[component_of(frames)] += int(count_s)
        total += int(count_s)
    shares: dict[str, float] = {}
    other = 0
    for name, count in counts.most_common():
        if name.startswith("other: ") and len(shares) >= len(COMPONENTS) + top_other:
            other += count
            continue
        shares[name] = round(count / total, 4) if total else 0.0
    if other:
        shares["other (rest)"] = round(other / total, 4)
    return {"samples": total, "idle_thread_samples_excluded": idle, "shares": shares}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path, help="py-spy record -f raw output")
    args = parser.parse_args()
    json.dump(breakdown(args.raw), sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
