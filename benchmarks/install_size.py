"""Installed size of iterrefine: the core and each extra, in fresh venvs.

``python benchmarks/install_size.py [--extras core,disk,...] [--ref REV]`` builds, per
contender, a fresh ``python3 -m venv`` and ``pip install`` of this checkout (``.`` for the
core, ``.[X]`` for an extra), then measures the venv with ``du -sm`` as the README's quick
start would. With ``--ref REV`` the same is done first for that commit's tree (``git
archive``), as the "before" figure.

The core venv must also run the README's main job (a 20-record trial on the simulator):
a contender that installs nothing useful cannot pass. Ceiling: the core ≤ 200 MB
(issue 24). pip's own cache serves the wheels after the first run; sizes do not depend
on it. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import loadavg, machine  # benchmarks/ is sys.path[0] for a script

ROOT = Path(__file__).resolve().parents[1]
CONTENDERS = ("core", "disk", "reports", "selection", "parquet", "hf", "all")
CORE_CEILING_MB = 200


def _du_mb(path: Path) -> int:
    out = subprocess.run(["du", "-sm", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def _venv(where: Path, source: Path, extra: str) -> dict[str, Any]:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    target = str(source) if extra == "core" else f"{source}[{extra}]"
    pip = subprocess.run([str(where / "bin" / "pip"), "install", "-q",
                          "--disable-pip-version-check", target],
                         capture_output=True, text=True, check=False)
    if pip.returncode != 0:
        raise SystemExit(f"pip install {target} failed:\n{pip.stderr[-3000:]}")
    return {"mb": _du_mb(where), "install_s": round(time.perf_counter() - started, 1)}


def _main_job(venv: Path, work: Path) -> dict[str, Any]:
    """README's main job, as a 20-record trial, in ``venv``: exit code and curated rows."""
    out = work / "out"
    work.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(
        [str(venv / "bin" / "iterrefine"), "run", str(ROOT / "examples" / "dolly_sample.jsonl"),
         "-o", str(out / "curated.jsonl"), "--llm", "sim", "--limit", "20", "--no-progress",
         "--summary", str(out / "summary.json"), "--data-dir", str(work / "data")],
        capture_output=True, text=True, cwd=work, check=False, timeout=600)
    rows = len((out / "curated.jsonl").read_text().splitlines()) if run.returncode == 0 else 0
    return {"exit": run.returncode, "curated_rows": rows,
            "stderr_tail": run.stderr[-500:] if run.returncode else ""}


def _tree_of(ref: str | None, into: Path) -> Path:
    """Commit ``ref``'s files, or (None) this checkout's as they are now, copied to ``into``
    (pip builds in the source tree: it would leave build/ in the checkout)."""
    into.mkdir(parents=True)
    if ref is None:
        files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
                                "--exclude-standard"], capture_output=True, check=True).stdout
        archive = subprocess.run(["tar", "-c", "-C", str(ROOT), "--null", "-T", "-"],
                                 input=files, capture_output=True, check=True).stdout
    else:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True,
                                 check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extras", default=",".join(CONTENDERS),
                        help=f"contenders, comma-separated (default: {','.join(CONTENDERS)})")
    parser.add_argument("--ref", help="also measure this commit's plain install (before)")
    args = parser.parse_args()
    wanted = [e for e in args.extras.split(",") if e]
    load_before = loadavg()
    sizes: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="iterrefine-size-") as tmp:
        base = Path(tmp)
        if args.ref:
            tree = _tree_of(args.ref, base / "ref-tree")
            sizes[f"before ({args.ref})"] = _venv(base / "ref-venv", tree, "core")
        tree = _tree_of(None, base / "tree")
        for extra in wanted:
            sizes[extra] = _venv(base / f"venv-{extra}", tree, extra)
            if extra == "core":
                sizes[extra]["main_job"] = _main_job(base / "venv-core", base / "job")
    core_mb = sizes.get("core", {}).get("mb")
    if core_mb is not None:
        for extra, row in sizes.items():
            if extra in CONTENDERS and extra != "core":
                row["over_core_mb"] = row["mb"] - core_mb
    checks: dict[str, bool] = {}
    if "core" in sizes:
        job = sizes["core"]["main_job"]
        checks["core_runs_the_main_job"] = job["exit"] == 0 and job["curated_rows"] > 0
        checks[f"core_at_most_{CORE_CEILING_MB}_mb"] = core_mb <= CORE_CEILING_MB
    print(json.dumps({
        "benchmark": "install_size",
        "python": sys.version.split()[0],
        "command": "python3 -m venv V && V/bin/pip install '.[EXTRA]' && du -sm V",
        "sizes_mb": sizes,
        "checks": checks,
        "passed": all(checks.values()),
        "machine": machine(),
        "load_before": load_before,
        "load_after": loadavg(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }, indent=2))


if __name__ == "__main__":
    main()
