"""The viewer's word diff: CPU seconds per diff, plain difflib (before) against the bounded diff.

The texts are the hostile case of issue 26: two different texts whose only common
tokens are single words (" the " between unrelated words), where difflib over word
tokens is cubic. ``before`` is the old algorithm (difflib over tokens, no junk), run
only up to ``--before-max-words`` (it takes minutes beyond); ``now`` is
:func:`iterrefine.tools.worddiff.word_diff` at every size. A realistic revision (5% of
the words changed) is measured too, to show the bounded diff still finds the edits.

Floor and ceiling: every diff must rebuild both texts exactly (a contender that does
nothing fails), the 5%-edited diff must keep at least 80% of the words equal, and
``now`` must stay under ``--ceiling-s`` per diff.

    python benchmarks/viewer_diff.py
"""

from __future__ import annotations

import argparse
import difflib
import json
import random
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from harness import loadavg, machine

from iterrefine.tools.worddiff import tokens, word_diff


def before(a: str, b: str) -> list[tuple[str, str]]:
    """The viewer's diff up to issue 26: difflib over tokens, autojunk off."""
    old, new = tokens(a), tokens(b)
    pieces = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if tag == "equal":
            pieces.append(("equal", "".join(old[i1:i2])))
            continue
        if i2 > i1:
            pieces.append(("delete", "".join(old[i1:i2])))
        if j2 > j1:
            pieces.append(("insert", "".join(new[j1:j2])))
    return pieces


def hostile(rng: random.Random, prefix: str, words: int) -> str:
    return " the ".join(f"{prefix}{rng.randrange(10**9)}" for _ in range(words // 2))


def edited(rng: random.Random, words: int) -> tuple[str, str]:
    base = [f"w{rng.randrange(words * 5)}" for _ in range(words)]
    changed = list(base)
    for _ in range(words // 20):
        changed[rng.randrange(words)] = f"x{rng.randrange(10**9)}"
    return " ".join(base), " ".join(changed)


def measure(diff: Any, a: str, b: str, repeats: int) -> dict[str, Any]:
    seconds = []
    pieces: list[tuple[str, str]] = []
    for _ in range(repeats):
        started = time.process_time()
        pieces = diff(a, b)
        seconds.append(time.process_time() - started)
    rebuilt = ("".join(t for op, t in pieces if op != "insert") == a
               and "".join(t for op, t in pieces if op != "delete") == b)
    kept = sum(len(t.split()) for op, t in pieces if op == "equal")
    return {"cpu_s_median": round(statistics.median(seconds), 4), "repeats": repeats,
            "rebuilds_both": rebuilt, "words_kept": kept}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="250,500,1000,8000,20000")
    parser.add_argument("--before-max-words", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ceiling-s", type=float, default=1.0)
    args = parser.parse_args()
    load_before = loadavg()
    rng = random.Random(26)
    rows = []
    for words in (int(s) for s in args.sizes.split(",")):
        a, b = hostile(rng, "a", words), hostile(rng, "b", words)
        row: dict[str, Any] = {"words": words, "case": "unrelated, single common words"}
        row["now"] = measure(word_diff, a, b, args.repeats)
        if words <= args.before_max_words:
            row["before"] = measure(before, a, b, 1)
        rows.append(row)
        a, b = edited(rng, words)
        rows.append({"words": words, "case": "5% of the words changed",
                     "now": measure(word_diff, a, b, args.repeats)})
    problems = []
    for row in rows:
        for name in ("now", "before"):
            if name in row and not row[name]["rebuilds_both"]:
                problems.append(f"{name} at {row['words']} words does not rebuild the texts")
        if row["now"]["cpu_s_median"] > args.ceiling_s:
            problems.append(f"now takes {row['now']['cpu_s_median']} s at {row['words']} words")
        if row["case"].startswith("5%") and row["now"]["words_kept"] < 0.8 * row["words"]:
            problems.append(f"now keeps only {row['now']['words_kept']} of {row['words']} words")
    print(json.dumps({
        "benchmark": "viewer_diff", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(), "loadavg_before": load_before, "loadavg_after": loadavg(),
        "parameters": vars(args), "rows": rows, "problems": problems, "ok": not problems,
    }, indent=2))


if __name__ == "__main__":
    main()
