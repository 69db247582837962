"""No silent loss of earlier results: overwrite refused, rows in input order, `-o x.json`
a JSON array, an empty input exit 5."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from iterrefine.app import exit_codes
from iterrefine.io.export import Terminal
from iterrefine.io.guard import incomplete_marker
from iterrefine.io.outputs import read_rows, write_outputs
from iterrefine.item.records import item_from_raw
from iterrefine.observe.logging import configure_logging

from .pipeline_support import sample_records, write_jsonl

ROOT = Path(__file__).parent.parent


@pytest.fixture(autouse=True)
def _logging_back_to_real_stderr() -> Iterator[None]:
    """The CLI points logging at capsys' stderr; later tests must not write to it once closed."""
    yield
    configure_logging(json=True, stream=sys.__stderr__)


async def cli_run(tmp_path: Path, broker: str, prefix: str, *argv: str,
                  ) -> tuple[int, str]:
    """``iterrefine run`` on the session broker; (exit code, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "iterrefine.cli", "run", *argv, "--llm", "sim", "--no-progress",
        "--bootstrap", broker, "--topic-prefix", prefix, "--sim-jitter-ms", "2",
        "--log-level", "warning", "--data-dir", str(tmp_path / "state"), cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(process.communicate(), timeout=240)
    assert process.returncode is not None
    return process.returncode, err.decode()


async def test_a_second_run_refuses_to_replace_results_unless_overwrite(
    broker: str, tmp_path: Path
) -> None:
    """Rerun onto finished results: exit 2 naming --overwrite, files untouched; with
    --overwrite it runs. Rows of `-o x.json` are one JSON array in input order."""
    records = [{"id": f"r{n:02d}", **r} for n, r in enumerate(sample_records(12))]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    argv = [str(source), "-o", "out/x.json", "--summary", "out/summary.json",
            "--sim-latency-ms", "5"]
    code, err = await cli_run(tmp_path, broker, f"t{uuid.uuid4().hex[:8]}.", *argv)
    assert code == 0, err[-2000:]
    out = tmp_path / "out"
    curated = json.loads((out / "x.json").read_text())  # one JSON array, not JSON lines
    rejected = json.loads((out / "x.rejected.json").read_text())
    assert len(curated) + len(rejected) == 12 and curated
    for rows in (curated, rejected):
        ids = [row["id"] for row in rows]
        assert ids == sorted(ids)  # input order: r00, r01, ...
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert not incomplete_marker(out / "x.json").exists()

    code, err = await cli_run(tmp_path, broker, f"t{uuid.uuid4().hex[:8]}.", *argv)
    assert code == exit_codes.USAGE
    assert "already exist" in err and "--overwrite" in err and "x.json" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    # --overwrite gets past the check (the empty input then stops it, before any writing).
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, err = await cli_run(tmp_path, broker, "unused.", str(empty), *argv[1:], "--overwrite")
    assert code == exit_codes.EMPTY_INPUT, err[-2000:]


async def test_a_cut_short_run_leaves_its_outputs_replaceable_by_the_rerun(
    broker: str, tmp_path: Path
) -> None:
    """Exit 3 writes what arrived and a marker: the next run of that output is not refused."""
    source = write_jsonl(tmp_path / "in.jsonl", sample_records(8))
    code, err = await cli_run(tmp_path, broker, f"t{uuid.uuid4().hex[:8]}.", str(source),
                              "-o", "out.jsonl", "--sim-latency-ms", "300", "--timeout-s", "0.5")
    assert code == exit_codes.CUT_SHORT, err[-2000:]
    assert (tmp_path / "out.jsonl").exists() and incomplete_marker(tmp_path / "out.jsonl").exists()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, err = await cli_run(tmp_path, broker, "unused.", str(empty), "-o", "out.jsonl")
    assert code == exit_codes.EMPTY_INPUT, err[-2000:]  # past the check without --overwrite


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_an_empty_input_says_so_and_exits_5(
    tmp_path: Path, content: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """No records: exit 5 naming the file, before anything starts; nothing is written."""
    from iterrefine.cli import main

    source = tmp_path / "empty.jsonl"
    source.write_text(content)
    code = main(["run", str(source), "-o", str(tmp_path / "out.jsonl"), "--llm", "sim",
                 "--no-progress", "--data-dir", str(tmp_path / "state")])
    assert code == exit_codes.EMPTY_INPUT == 5
    assert "holds no records" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl"]


def _terminal(n: int, outcome: str = "curated") -> Terminal:
    raw = json.dumps({"id": f"a{n}", "instruction": "q [x] {y}", "output": "o"}).encode()
    item = item_from_raw(raw)
    return Terminal(id=item.id, outcome=outcome, revision=0,  # type: ignore[arg-type]
                    timestamp_ms=0, item=item, meta={}, raw=b"")


@pytest.mark.unit
@pytest.mark.parametrize("rows", [0, 1, 3])
def test_json_output_is_one_array_read_back_by_show_and_view(tmp_path: Path, rows: int) -> None:
    """`x.json` and `x.rejected.json` are JSON arrays (empty: []); dead letters JSON lines."""
    terminals = [_terminal(n) for n in range(rows)] + [_terminal(9, "rejected")]
    paths, counts = write_outputs(terminals, tmp_path / "x.json", shape="alpaca")
    assert (paths.rejected.name, paths.dlq.name) == ("x.rejected.json", "x.dlq.jsonl")
    assert counts == {"curated": rows, "rejected": 1, "dlq": 0}
    curated = json.loads(paths.curated.read_text())
    assert [r["id"] for r in curated] == [f"a{n}" for n in range(rows)]
    assert [r["id"] for r in json.loads(paths.rejected.read_text())] == ["a9"]
    assert list(read_rows(paths.curated)) == curated
    assert paths.dlq.read_text() == ""
