"""`iterrefine report`: PNG and HTML from a run summary, tolerant of missing parts."""

from __future__ import annotations

import base64
import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest

from iterrefine.cli import main
from iterrefine.errors import ConfigError
from iterrefine.tools.report import load_summary, render_html, render_png, write_report

SUMMARY = Path(__file__).parent / "data" / "summary_example.json"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def summary() -> dict[str, Any]:
    return load_summary(SUMMARY)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_cli_writes_a_valid_png(tmp_path: Path) -> None:
    """`iterrefine report SUMMARY -o X.png` writes a non-empty PNG of a readable size."""
    out = tmp_path / "report.png"
    assert main(["report", str(SUMMARY), "-o", str(out)]) == 0
    data = out.read_bytes()
    assert len(data) > 10_000
    width, height = _png_size(data)
    assert width >= 1200 and height >= 800
    assert not out.with_suffix(".html").exists()


def test_cli_html_embeds_the_png_and_the_counts(tmp_path: Path) -> None:
    """--html writes a page with the PNG inline (base64) and the summary's numbers."""
    out = tmp_path / "run" / "report.png"
    assert main(["report", str(SUMMARY), "-o", str(out), "--html"]) == 0
    page = out.with_suffix(".html").read_text(encoding="utf-8")
    match = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert match is not None
    assert base64.b64decode(match.group(1)) == out.read_bytes()
    cells = set(re.findall(r"<td>([^<]*)</td>", page))
    # Totals, outcomes, rounds, DLQ reasons and LLM usage from the fixture.
    assert {"200", "180", "12", "8", "90", "70", "40", "not_json", "missing_field"} <= cells
    assert {"strong", "backbone", "900", "123,000", "0.700"} <= cells
    assert "simulated LLM" in page


@pytest.mark.unit
def test_simulated_runs_are_labelled(summary: dict[str, Any]) -> None:
    """A simulated run says so in the title; a real one does not."""
    assert "simulated LLM" in render_html(summary, b"png")
    real = {**summary, "simulated": False}
    page = render_html(real, b"png")
    assert "simulated LLM" not in page
    assert "LLM simulator" not in page


@pytest.mark.unit
@pytest.mark.parametrize(
    "partial",
    [
        {},
        {"simulated": True},
        {"items_in": 3, "outcomes": {"high": 3}},
        {"rounds": {"converged": {"1": 2, "x": "bad"}}, "quality": {"before": {"mean": 7.5}}},
        {"llm": {"strong": {"requests": 10}}, "quality": {"after": {"histogram": {"9": 4}}}},
        {"outcomes": "not a mapping", "rounds": None, "llm": [], "quality": 3},
    ],
)
def test_missing_or_odd_keys_still_render(partial: dict[str, Any], tmp_path: Path) -> None:
    """Partial summaries draw "no data" panels instead of failing."""
    paths = write_report(partial, tmp_path / "r.png", html_path=tmp_path / "r.html")
    assert _png_size(paths[0].read_bytes())
    assert "<img" in paths[1].read_text(encoding="utf-8")


@pytest.mark.unit
def test_render_png_is_deterministic_size(summary: dict[str, Any]) -> None:
    """The figure has a fixed size, whatever the data."""
    assert _png_size(render_png(summary)) == _png_size(render_png({}))


@pytest.mark.unit
def test_unreadable_summary_is_a_config_error(tmp_path: Path) -> None:
    """A missing, malformed or non-object summary names the file in a ConfigError."""
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    listy = tmp_path / "list.json"
    listy.write_text(json.dumps([1, 2]))
    for path in (tmp_path / "missing.json", bad, listy):
        with pytest.raises(ConfigError, match=re.escape(str(path))):
            load_summary(path)


def test_cli_reports_errors_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing summary exits 2 with a one-line error."""
    assert main(["report", str(tmp_path / "missing.json"), "-o", str(tmp_path / "r.png")]) == 2
    assert "cannot read run summary" in capsys.readouterr().err


@pytest.mark.unit
def test_html_escapes_summary_text(summary: dict[str, Any]) -> None:
    """Strings from the summary (e.g. DLQ reasons) cannot inject markup."""
    hostile = {**summary, "dlq_reasons": {"<script>alert(1)</script>": 1}}
    page = render_html(hostile, b"png")
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
