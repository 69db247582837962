"""The response cache under faults: what a second ``iterrefine run`` pays, trusts and marks.

Four scenarios, each a first run that fills the cache and a second run (same data dir)
after a fault, on ``iterrefine sim-llm`` processes reached with ``--llm-base-url``:

* ``other_endpoint``: the second run goes to another simulator with the same model
  names. Figures: requests the new endpoint got (a cache keyed by the endpoint: all of
  them) and whether the rows and summary are marked simulated.
* ``tampered``: every cached answer is replaced with a planted score answer before the
  second run. Figures: curated rows carrying the planted justification (answers
  trusted), requests paid, entries refused.
* ``corrupt``: the cache file is overwritten with garbage; then a second and a third run.
  Figures: requests each pays (a cache that is rebuilt: the third pays nothing).
* ``busy``: every answer cached, the endpoint replaced by one answering 503 to
  everything (``--timeout-s`` caps the run). Figures: exit code and wall time.

The script uses only the command line and SQLite, so the same file measures an older
checkout (issue 26's "before"). Floor: each first run curates every item. Prints JSON.

    python benchmarks/cache_faults.py --items 40
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import ROOT, loadavg, machine
from simproc import SimProcess

PLANTED = ("Usable: yes\nReason: planted.\nCorrectness: 10\nCompleteness: 10\nClarity: 10\n"
           "Compliance: 10\nReasoning: 10\nVerdict: high\nJustification: PLANTED-ANSWER")
_BUSY = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def answer(self):
        body = b'{"error": {"message": "overloaded"}}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = answer
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def sim(folder: Path, name: str) -> SimProcess:
    return SimProcess(log_path=folder / f"{name}.log", latency_ms=5, capacity=0,
                      low_share=0.5, reject_share=0.02, lose_prob=0.5)


def run(source: Path, out: Path, base_url: str, data_dir: Path,
        timeout_s: float = 300) -> dict[str, Any]:
    summary_path = out.with_suffix(".summary.json")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "iterrefine.cli", "run", str(source), "-o", str(out),
         "--llm-base-url", base_url, "--strong-model", "sim-strong",
         "--backbone-model", "sim-backbone", "--data-dir", str(data_dir),
         "--summary", str(summary_path), "--no-progress", "--log-level", "error",
         "--timeout-s", str(timeout_s)],
        cwd=ROOT, capture_output=True, text=True, check=False)
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    rows = []
    if out.exists():
        rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    llm = summary.get("llm", {})
    return {
        "exit_code": done.returncode,
        "wall_s": round(time.monotonic() - started, 2),
        "curated": summary.get("curated"),
        "requests_paid": sum(role.get("requests", 0) for role in llm.values()),
        "cache_hits": sum(role.get("cache_hits", 0) for role in llm.values()),
        "cache_rejected": sum(role.get("cache_rejected", 0) for role in llm.values()),
        "summary_simulated": summary.get("simulated"),
        "rows_simulated": sum(bool(r.get("item", {}).get("provenance", {}).get("simulated"))
                              for r in rows),
        "rows_with_planted_answer": sum("PLANTED-ANSWER" in json.dumps(r) for r in rows),
        "error": done.stderr.strip().splitlines()[-1][:300] if done.returncode else "",
    }


def answers_table(path: Path) -> str:
    db = sqlite3.connect(path)
    try:
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    finally:
        db.close()
    return "sealed_answers" if "sealed_answers" in names else "answers"


@contextlib.contextmanager
def busy(port: int) -> Iterator[None]:
    process = subprocess.Popen([sys.executable, "-c", _BUSY, str(port)])
    time.sleep(0.5)
    try:
        yield
    finally:
        process.terminate()
        process.wait()


def scenario(name: str, work: Path, source: Path) -> dict[str, Any]:
    folder = work / name
    folder.mkdir()
    data_dir = folder / "d"
    cache = data_dir / "llm-cache.sqlite3"
    result: dict[str, Any] = {}
    with sim(folder, "sim") as first:
        result["first"] = run(source, folder / "first.jsonl", first.base_url, data_dir)
        if name == "other_endpoint":
            with sim(folder, "other") as other:
                result["second"] = run(source, folder / "second.jsonl", other.base_url,
                                       data_dir)
                result["other_endpoint_requests"] = other.stats(series=False)[
                    "requests_total"]
        elif name == "tampered":
            db = sqlite3.connect(cache)
            with db:
                db.execute(f"UPDATE {answers_table(cache)} SET text = ?", (PLANTED,))
            db.close()
            result["second"] = run(source, folder / "second.jsonl", first.base_url, data_dir)
        elif name == "corrupt":
            for leftover in data_dir.glob("llm-cache.sqlite3-*"):
                leftover.unlink()
            cache.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 64)
            result["second"] = run(source, folder / "second.jsonl", first.base_url, data_dir)
            result["third"] = run(source, folder / "third.jsonl", first.base_url, data_dir)
        port, base_url = first.port, first.base_url
    if name == "busy":
        with busy(port):
            result["second"] = run(source, folder / "second.jsonl", base_url, data_dir,
                                   timeout_s=60)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--label", default="now", help="what code was measured (free text)")
    args = parser.parse_args()
    load_before = loadavg()
    base = [json.loads(line) for line in
            (ROOT / "examples" / "dolly_sample.jsonl").read_text().splitlines()]
    with tempfile.TemporaryDirectory(prefix="iterrefine-cache-faults-") as tmp:
        work = Path(tmp)
        source = work / "in.jsonl"
        source.write_text("".join(json.dumps({**base[i % len(base)], "id": f"c{i}"}) + "\n"
                                  for i in range(args.items)))
        results = {name: scenario(name, work, source)
                   for name in ("other_endpoint", "tampered", "corrupt", "busy")}
    problems = [f"{name}: the first run curated {r['first']['curated']}"
                for name, r in results.items() if not r["first"]["curated"]]
    print(json.dumps({
        "benchmark": "cache_faults", "label": args.label,
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
        "loadavg_before": load_before, "loadavg_after": loadavg(), "parameters": vars(args),
        "scenarios": results, "problems": problems, "ok": not problems,
    }, indent=2))


if __name__ == "__main__":
    main()
