"""Mutation testing of the decision code: which wrong rules would the tests let through?

``python benchmarks/mutation.py`` copies the checkout (the working tree's tracked and
new files, or ``--ref COMMIT``) into a scratch directory, so the checkout itself is
never mutated, and runs mutmut (``pip install -e '.[mutation]'``) there over the
target files with a chosen test subset. It prints one JSON object: the counts
(mutants, killed, surviving, equivalent, ...) and every surviving mutant with its diff.

Targets (``--target``, repeatable) are paths in the repository; the default is the
paper's decisions: ``consumers/*.py`` and the selection quota and routing
(``iterrefine/selection/{quota,policy,exact}.py``). Tests (``--tests``) are pytest
arguments; the default is every pure test (``tests -m unit``): mutmut runs each mutant
against the tests that execute the mutated function, in a forked process, so a test on
the broker would start a broker per mutant.

A mutant no selected test executes counts as surviving (mutmut's "no tests"): nothing
would notice it. A surviving mutant that cannot change any behaviour is *equivalent*:
``benchmarks/mutation_equivalent.json`` lists those, each matched by file, function and
the changed lines, with the reason it changes nothing. ``--check`` exits 1 while any
surviving mutant is not listed there.

It takes minutes (about 7 mutants a second on two cores, after one run of the selected
tests to learn which tests reach which function), so it is not part of the test suite.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: The decision code: every stage module, and the selection quota and routing.
DEFAULT_TARGETS = ("consumers/*.py", "iterrefine/selection/quota.py",
                   "iterrefine/selection/policy.py", "iterrefine/selection/exact.py")
DEFAULT_TESTS = ("tests", "-m", "unit")
PYTEST_ARGS = [
    "-p", "no:cacheprovider", "-q",
    # The scratch copy holds the stages as a folder, not the link this test pins.
    "--deselect", "tests/test_packaging.py::test_the_package_directory_is_the_top_level_consumers",
    # mutmut writes every mutant into the mutated module: its rooms are huge by design.
    "--deselect", "tests/test_layers.py::test_no_room_too_big_to_read",
]
EQUIVALENT = Path(__file__).resolve().parent / "mutation_equivalent.json"
#: Thread pools of the numeric libraries held to one thread (see :func:`run`).
_ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# Run inside the scratch copy, where mutmut's configuration is: every mutant's status, and
# the diff of each one that was not killed.
_COLLECT = r"""
import json, sys
from mutmut.utils.file_utils import walk_mutatable_files
from mutmut.mutation.data import SourceFileMutationData
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code
rows = []
for path in walk_mutatable_files():
    data = SourceFileMutationData(path=path)
    data.load()
    for name, code in data.exit_code_by_key.items():
        status = status_by_exit_code[code]
        diff = "" if status == "killed" else get_diff_for_mutant(name, path=path)
        rows.append({"name": name, "path": str(path), "status": status, "diff": diff})
json.dump(rows, sys.stdout)
"""


def _files(ref: str | None) -> list[str]:
    """The repository's files: at ``ref``, or the working tree's tracked and new ones."""
    if ref is not None:
        out = subprocess.run(["git", "ls-tree", "-r", "--name-only", ref], cwd=ROOT,
                             check=True, capture_output=True, text=True).stdout
    else:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line]


def _copy_checkout(scratch: Path, ref: str | None) -> None:
    if ref is not None:
        archive = subprocess.run(["git", "archive", ref], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(scratch)], input=archive, check=True)
    else:
        for name in _files(None):
            source = ROOT / name
            if source.is_symlink() or not source.is_file():
                continue
            target = scratch / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    # mutmut walks iterrefine/ without following links: the stages must be a real folder
    # there, under the module name the tests import (iterrefine.consumers).
    link = scratch / "iterrefine" / "consumers"
    if link.is_symlink() or link.is_file():
        link.unlink()
    shutil.copytree(scratch / "consumers", link, dirs_exist_ok=True)


def _in_package(target: str) -> str:
    """The path mutmut sees for a target: consumers/x.py is iterrefine/consumers/x.py."""
    return f"iterrefine/{target}" if target.startswith("consumers/") else target


def _repo_path(mutated: str) -> str:
    return mutated.removeprefix("iterrefine/") if mutated.startswith(
        "iterrefine/consumers/") else mutated


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def _configure(scratch: Path, targets: list[str], tests: list[str]) -> None:
    pyproject = scratch / "pyproject.toml"
    text = pyproject.read_text()
    if "[tool.mutmut]" in text:
        raise SystemExit("pyproject.toml already has a [tool.mutmut] table; this program "
                         "writes its own")
    pyproject.write_text(text + "\n[tool.mutmut]\n"
                         'source_paths = ["iterrefine"]\n'
                         f"only_mutate = {_toml_list([_in_package(t) for t in targets])}\n"
                         f"also_copy = {_toml_list(_beside(scratch))}\n"
                         f"pytest_add_cli_args_test_selection = {_toml_list(tests)}\n"
                         f"pytest_add_cli_args = {_toml_list(PYTEST_ARGS)}\n")


def _beside(scratch: Path) -> list[str]:
    """Everything but the package: tests read docs, examples, deploy files and benchmarks."""
    return sorted(p.name for p in scratch.iterdir() if p.name not in ("iterrefine", "mutants"))


def _changed_lines(diff: str) -> tuple[list[str], list[str]]:
    body = [line for line in diff.splitlines() if not line.startswith(("---", "+++", "@@"))]
    removed = [line[1:].strip() for line in body if line.startswith("-")]
    added = [line[1:].strip() for line in body if line.startswith("+")]
    return removed, added


def _function(name: str) -> str:
    """``iterrefine.consumers.review.x_judge__mutmut_3`` → ``judge``;
    ``...xǁClusterQuotaǁdecide__mutmut_1`` → ``ClusterQuota.decide``."""
    tail = name.rsplit(".", 1)[-1].rsplit("__mutmut_", 1)[0]
    if tail.startswith("xǁ"):
        return ".".join(tail.removeprefix("xǁ").split("ǁ"))
    return tail.removeprefix("x_")


def _load_equivalent(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    entries: list[dict[str, Any]] = json.loads(path.read_text())["equivalent"]
    return entries


def _matches(entry: dict[str, Any], row: dict[str, Any]) -> bool:
    return all(entry[key] == row[key] for key in ("file", "function", "removed", "added"))


def run(targets: list[str], tests: list[str], ref: str | None, children: int,
        keep: bool, equivalent_path: Path) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="iterrefine-mutation-"))
    started = time.monotonic()
    load_before = os.getloadavg()
    try:
        _copy_checkout(scratch, ref)
        _configure(scratch, targets, tests)
        # One OpenMP/BLAS thread: mutmut forks a child per mutant from a process whose
        # numpy and scikit-learn thread pools are already up, and a forked child's k-means
        # then hangs until mutmut's CPU limit: a "timeout" whatever the tests said (with
        # one thread every mutant fails or survives on its merits).
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **_ONE_THREAD}
        mutmut = subprocess.run(
            [sys.executable, "-m", "mutmut", "run", "--max-children", str(children)],
            cwd=scratch, env=env, capture_output=True, text=True)
        if mutmut.returncode != 0 or not (scratch / "mutants").is_dir():
            raise SystemExit(f"mutmut did not run (exit {mutmut.returncode}):\n"
                             f"{mutmut.stdout[-3000:]}\n{mutmut.stderr[-3000:]}")
        collected = subprocess.run([sys.executable, "-c", _COLLECT], cwd=scratch, env=env,
                                   capture_output=True, text=True)
        if collected.returncode != 0:
            raise SystemExit(f"reading mutmut's results failed:\n{collected.stderr[-3000:]}")
        rows: list[dict[str, Any]] = json.loads(collected.stdout)
    finally:
        if keep:
            print(f"scratch copy kept: {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    equivalent = _load_equivalent(equivalent_path)
    counts: Counter[str] = Counter()
    surviving: list[dict[str, Any]] = []
    listed: list[dict[str, Any]] = []
    for row in rows:
        counts[row["status"]] += 1
        if row["status"] == "killed":
            continue
        removed, added = _changed_lines(row["diff"])
        summary = {"file": _repo_path(row["path"]), "function": _function(row["name"]),
                   "mutant": row["name"], "status": row["status"], "removed": removed,
                   "added": added}
        reason = next((e["reason"] for e in equivalent if _matches(e, summary)), None)
        if reason is None:
            surviving.append(summary)
        else:
            listed.append({**summary, "reason": reason})
    return {
        "benchmark": "mutation",
        "tool": f"mutmut {_version()}",
        "ref": ref or "working tree",
        "targets": targets,
        "tests": tests,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "children": children,
        "seconds": round(time.monotonic() - started, 1),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "counts": {
            "mutants": len(rows),
            "killed": counts["killed"],
            # Not killed: the selected tests passed with the mutant (survived), or none of
            # them executes the mutated function (no tests), or it ran out of time.
            "not_killed": len(rows) - counts["killed"],
            "by_status": dict(sorted(counts.items())),
            "equivalent": len(listed),
            "surviving": len(surviving),
        },
        "surviving": surviving,
        "equivalent": listed,
    }


def _version() -> str:
    from importlib.metadata import version

    return version("mutmut")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", action="append", dest="targets",
                        help="a file (or glob) to mutate, repeatable; default: the decision code")
    parser.add_argument("--tests", nargs=argparse.REMAINDER,
                        help="pytest arguments selecting the tests (last option); "
                             "default: tests -m unit")
    parser.add_argument("--ref", help="mutate this commit instead of the working tree")
    parser.add_argument("--children", type=int, default=2, help="mutants run at once")
    parser.add_argument("--equivalent", type=Path, default=EQUIVALENT,
                        help="the list of equivalent mutants")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a surviving mutant is not listed as equivalent")
    args = parser.parse_args()
    files = _files(args.ref)
    targets: list[str] = []
    for pattern in args.targets or DEFAULT_TARGETS:
        found = sorted(f for f in files if fnmatch.fnmatchcase(f, pattern)
                       and f.endswith(".py"))
        if not found:
            parser.error(f"no file of the checkout matches {pattern}")
        targets += [f for f in found if f not in targets]
    result = run(targets, args.tests or list(DEFAULT_TESTS), args.ref, args.children,
                 args.keep, args.equivalent)
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 1 if args.check and result["counts"]["surviving"] else 0


if __name__ == "__main__":
    sys.exit(main())
