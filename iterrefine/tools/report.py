"""A one-page picture of a pipeline run, from the summary JSON that ``iterrefine run`` writes.

Four panels: where items ended up, how many refine ⇄ review rounds they took,
judge scores before and after refinement, and LLM latency per role. The PNG
is drawn with matplotlib's Agg canvas directly (no pyplot, no display, no
global backend switch); the HTML page embeds it and lists the numbers.
Missing parts of the summary draw "no data" instead of failing, so a report
of a crashed or partial run still renders.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from iterrefine.errors import ConfigError

__all__ = ["load_summary", "render_html", "render_png", "write_report"]

Summary = Mapping[str, Any]

_OUTCOME_COLORS = {
    "high": "#2e7d32",
    "refined": "#66bb6a",
    "unrefined": "#ffb300",
    "dropped": "#9e9e9e",
    "rejected": "#e53935",
    "dlq": "#8e0000",
}
_CONVERGED, _EXHAUSTED = "#43a047", "#fb8c00"
_BEFORE, _AFTER = "#90a4ae", "#1e88e5"
_QUANTILES = ("p50", "p95", "p99")
_QUANTILE_COLORS = ("#64b5f6", "#1e88e5", "#0d47a1")


def load_summary(path: Path | str) -> dict[str, Any]:
    """Read a run summary; a missing or malformed file is a ConfigError naming it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read run summary {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"run summary {path} is not a JSON object")
    return data


# -- tolerant readers: the summary may come from an older run or a partial one


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _counts(value: Any) -> dict[str, float]:
    """A {name: count} mapping with non-numeric entries dropped."""
    return {str(k): n for k, v in _mapping(value).items() if (n := _number(v)) is not None}


def _by_int_key(counts: Mapping[str, float]) -> dict[int, float]:
    out: dict[int, float] = {}
    for key, count in counts.items():
        try:
            out[int(key)] = count
        except ValueError:
            continue
    return out


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _title(summary: Summary) -> str:
    parts = ["iterrefine run report"]
    if summary.get("simulated") is True:
        parts.append("simulated LLM (iterrefine sim-llm, not a model)")
    return " — ".join(parts)


def _headline(summary: Summary) -> str:
    items_in = _number(summary.get("items_in"))
    wall = _number(summary.get("wall_time_s"))
    bits = [
        f"{value:,.0f} {label}"
        for key, label in (("items_in", "items in"), ("curated", "curated"),
                           ("rejected", "rejected"), ("dlq", "dead-lettered"))
        if (value := _number(summary.get(key))) is not None
    ]
    if wall is not None:
        rate = f", {items_in / wall:,.1f} items/s" if items_in and wall > 0 else ""
        bits.append(f"wall time {wall:,.1f} s{rate}")
    return "   ·   ".join(bits) if bits else "no totals in the summary"


# -- the four panels


def _no_data(ax: Axes, title: str) -> None:
    ax.set_title(title, loc="left", fontweight="bold")
    ax.text(0.5, 0.5, "no data", ha="center", va="center", color="#757575", fontsize=14,
            transform=ax.transAxes)
    ax.set_axis_off()


def _label_bars(
    ax: Axes, bars: Any, values: Iterable[float], fmt: str = "{:,.0f}", *, zeros: bool = True
) -> None:
    labels = [fmt.format(v) if v or zeros else "" for v in values]
    ax.bar_label(bars, labels=labels, padding=2, fontsize=9)


def _keep_bars_narrow(ax: Axes, n_bars: int, slots: int = 4) -> None:
    # One or two categories would otherwise be stretched across the whole panel.
    if n_bars < slots:
        pad = (slots - n_bars) / 2
        ax.set_xlim(-0.5 - pad, n_bars - 0.5 + pad)


def _draw_outcomes(ax: Axes, summary: Summary) -> None:
    title = "Where items ended up"
    outcomes = _counts(summary.get("outcomes"))
    if not outcomes:
        _no_data(ax, title)
        return
    names = list(outcomes)
    values = [outcomes[n] for n in names]
    bars = ax.bar(names, values, color=[_OUTCOME_COLORS.get(n, "#5c6bc0") for n in names])
    items_in = _number(summary.get("items_in"))
    if items_in:
        ax.bar_label(bars, labels=[f"{v:,.0f} ({v / items_in:.0%})" for v in values],
                     padding=2, fontsize=9)
    else:
        _label_bars(ax, bars, values)
    _keep_bars_narrow(ax, len(names))
    ax.set_title(title, loc="left", fontweight="bold")
    ax.set_ylabel("items")
    ax.margins(y=0.15)


def _draw_rounds(ax: Axes, summary: Summary) -> None:
    title = "Refine ⇄ review rounds per item"
    rounds = _mapping(summary.get("rounds"))
    converged = _by_int_key(_counts(rounds.get("converged")))
    exhausted = _by_int_key(_counts(rounds.get("exhausted")))
    if not converged and not exhausted:
        _no_data(ax, title)
        return
    xs = list(range(1, max([*converged, *exhausted]) + 1))
    width = 0.4
    conv = [converged.get(x, 0) for x in xs]
    exh = [exhausted.get(x, 0) for x in xs]
    n_conv, n_exh = sum(conv), sum(exh)
    ratio = f"{n_conv / (n_conv + n_exh):.0%} converged" if n_conv + n_exh else ""
    b1 = ax.bar([x - width / 2 for x in xs], conv, width, color=_CONVERGED,
                label=f"converged ({n_conv:,.0f})")
    b2 = ax.bar([x + width / 2 for x in xs], exh, width, color=_EXHAUSTED,
                label=f"exhausted round limit ({n_exh:,.0f})")
    _label_bars(ax, b1, conv, zeros=False)
    _label_bars(ax, b2, exh, zeros=False)
    ax.set_xticks(xs)
    ax.set_xlabel("rounds")
    ax.set_ylabel("items")
    ax.set_title(f"{title}{' — ' + ratio if ratio else ''}", loc="left", fontweight="bold")
    ax.legend(frameon=False)
    ax.margins(y=0.15)


def _draw_quality(ax: Axes, summary: Summary) -> None:
    title = "Judge score before / after refinement"
    quality = _mapping(summary.get("quality"))
    before, after = _mapping(quality.get("before")), _mapping(quality.get("after"))
    hist_before = _by_int_key(_counts(before.get("histogram")))
    hist_after = _by_int_key(_counts(after.get("histogram")))
    if hist_before or hist_after:
        _quality_histograms(ax, (before, hist_before, _BEFORE, "before (scoring)"),
                            (after, hist_after, _AFTER, "after (re-scored once aligned)"))
        ax.set_title(title, loc="left", fontweight="bold")
        return
    means = {label: m for label, side in (("before", before), ("after", after))
             if (m := _number(side.get("mean"))) is not None}
    if not means:
        _no_data(ax, title)
        return
    bars = ax.bar(list(means), list(means.values()), color=[_BEFORE, _AFTER][: len(means)])
    _label_bars(ax, bars, means.values(), "{:.2f}")
    _keep_bars_narrow(ax, len(means))
    ax.set_ylim(0, 10.5)
    ax.set_ylabel("mean score (1–10)")
    ax.set_title(title, loc="left", fontweight="bold")


def _quality_histograms(ax: Axes, *sides: tuple[Mapping[str, Any], dict[int, float], str, str]
                        ) -> None:
    # Shares, not counts: "after" covers only the refined items, far fewer than "before".
    width = 0.4
    scores = list(range(1, 11))
    for offset, (side, hist, color, label) in zip((-width / 2, width / 2), sides, strict=True):
        total = sum(hist.values())
        if not total:
            continue
        shares = [hist.get(s, 0) / total for s in scores]
        mean = _number(side.get("mean"))
        count = _number(side.get("count"))
        ax.bar([s + offset for s in scores], shares, width, color=color,
               label=f"{label}: n={_fmt(count if count is not None else total)}, "
                     f"mean {_fmt(mean, 2)}")
        if mean is not None:
            ax.axvline(mean, color=color, linestyle="--", linewidth=1.5)
    ax.set_xticks(scores)
    ax.set_xlabel("score (dashed line: mean)")
    ax.set_ylabel("share of items")
    ax.yaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")
    ax.legend(frameon=False, loc="upper left")


def _draw_latency(ax: Axes, summary: Summary) -> None:
    title = "LLM latency per role"
    llm = _mapping(summary.get("llm"))
    roles = {role: _mapping(_mapping(stats).get("latency_s")) for role, stats in llm.items()}
    roles = {r: lat for r, lat in roles.items() if any(_number(lat.get(q)) for q in _QUANTILES)}
    if not roles:
        _no_data(ax, title)
        return
    names = list(roles)
    width = 0.8 / len(_QUANTILES)
    for i, (q, color) in enumerate(zip(_QUANTILES, _QUANTILE_COLORS, strict=True)):
        values = [_number(roles[r].get(q)) or 0.0 for r in names]
        xs = [n + (i - 1) * width for n in range(len(names))]
        bars = ax.bar(xs, values, width, color=color, label=q)
        _label_bars(ax, bars, values, "{:.2f}s")
    ax.set_xticks(range(len(names)), [_role_label(r, _mapping(llm[r])) for r in names])
    ax.set_ylabel("seconds")
    ax.set_title(title, loc="left", fontweight="bold")
    ax.legend(frameon=False, ncols=3, loc="upper right")
    ax.margins(y=0.2)


def _role_label(role: str, stats: Mapping[str, Any]) -> str:
    requests, errors = _number(stats.get("requests")), _number(stats.get("errors"))
    tokens = sum(_number(stats.get(k)) or 0 for k in ("prompt_tokens", "completion_tokens"))
    lines = [role]
    if requests is not None:
        lines.append(f"{requests:,.0f} requests, {_fmt(errors)} errors")
    if tokens:
        lines.append(f"{tokens:,.0f} tokens")
    return "\n".join(lines)


def render_png(summary: Summary) -> bytes:
    """Draw the four-panel report and return it as PNG bytes."""
    fig = Figure(figsize=(15, 10), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(_title(summary), fontsize=16, fontweight="bold")
    ax_outcomes, ax_rounds, ax_quality, ax_latency = fig.subplots(2, 2).flat
    fig.supxlabel(_headline(summary), fontsize=11, color="#424242")
    _draw_outcomes(ax_outcomes, summary)
    _draw_rounds(ax_rounds, summary)
    _draw_quality(ax_quality, summary)
    _draw_latency(ax_latency, summary)
    for ax in (ax_outcomes, ax_rounds, ax_quality, ax_latency):
        ax.spines[["top", "right"]].set_visible(False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# -- HTML: the picture plus the numbers, for a browser or a CI artifact

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #212121; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.5em; }
.simulated { background: #fff3e0; border-left: 4px solid #fb8c00; padding: .6em 1em; }
img { max-width: 100%; border: 1px solid #e0e0e0; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #e0e0e0; padding: .3em .8em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f5f5f5; }
"""


_TOTALS = (
    ("items_in", "items in"),
    ("curated", "curated"),
    ("rejected", "rejected"),
    ("dlq", "dead-lettered"),
    ("wall_time_s", "wall time (s)"),
)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(title: str, header: list[str], rows: list[list[str]]) -> str:
    content = _table(header, rows) if rows else "<p>no data</p>"
    return f"<h2>{html.escape(title)}</h2>\n{content}"


def _cluster_row(cluster: str, counts: Mapping[str, Any]) -> list[str]:
    items = _number(counts.get("items")) or 0.0
    high = _number(counts.get("high")) or 0.0
    share = _fmt(100 * high / items, 1) if items else "-"
    return [cluster, _fmt(items), _fmt(high), share]


def _html_sections(summary: Summary) -> list[str]:
    totals = [
        [label, _fmt(value, 1 if key == "wall_time_s" else 0)]
        for key, label in _TOTALS
        if (value := _number(summary.get(key))) is not None
    ]
    outcomes = [[k, _fmt(v)] for k, v in _counts(summary.get("outcomes")).items()]
    rounds = _mapping(summary.get("rounds"))
    converged = _by_int_key(_counts(rounds.get("converged")))
    exhausted = _by_int_key(_counts(rounds.get("exhausted")))
    round_rows = [[str(r), _fmt(converged.get(r, 0)), _fmt(exhausted.get(r, 0))]
                  for r in sorted({*converged, *exhausted})]
    quality = _mapping(summary.get("quality"))
    quality_rows = [[side, _fmt(_number(q.get("count"))), _fmt(_number(q.get("mean")), 2)]
                    for side in ("before", "after")
                    if (q := _mapping(quality.get(side)))]
    dlq = [[k, _fmt(v)] for k, v in _counts(summary.get("dlq_reasons")).items()]
    llm_rows = []
    for role, raw in _mapping(summary.get("llm")).items():
        stats = _mapping(raw)
        latency = _mapping(stats.get("latency_s"))
        llm_rows.append([
            str(role),
            *(_fmt(_number(stats.get(k))) for k in
              ("requests", "errors", "prompt_tokens", "completion_tokens")),
            *(_fmt(_number(latency.get(q)), 3) for q in ("mean", *_QUANTILES)),
        ])
    selection = _mapping(summary.get("selection"))
    cluster_rows = [_cluster_row(str(c), _mapping(raw))
                    for c, raw in _mapping(selection.get("clusters")).items()]
    sections = [] if not selection else [_section(
        f"Selection (cluster quota; not_reasoning rejected: "
        f"{_fmt(_number(selection.get('not_reasoning')))}, difficulty p50: "
        f"{_fmt(_number(_mapping(selection.get('difficulty')).get('p50')), 2)})",
        ["cluster", "items", "high", "high %"], cluster_rows)]
    return [
        _section("Totals", ["", "value"], totals),
        _section("Outcomes", ["outcome", "items"], outcomes),
        _section("Rounds", ["rounds", "converged", "exhausted"], round_rows),
        _section("Quality score", ["", "items", "mean"], quality_rows),
        _section("Dead-letter reasons", ["reason", "messages"], dlq),
        _section("LLM", ["role", "requests", "errors", "prompt tokens", "completion tokens",
                         "mean s", "p50 s", "p95 s", "p99 s"], llm_rows),
        *sections,
    ]


def render_html(summary: Summary, png: bytes) -> str:
    """An HTML page with the PNG embedded (base64) and the summary's numbers as tables."""
    title = html.escape(_title(summary))
    banner = (
        '<p class="simulated">Made with the LLM simulator: these numbers measure the pipeline, '
        "not the quality of any model.</p>"
        if summary.get("simulated") is True
        else ""
    )
    image = base64.b64encode(png).decode("ascii")
    body = "\n".join(_html_sections(summary))
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{title}</title><style>{_CSS}</style></head>\n<body>\n"
        f"<h1>{title}</h1>\n{banner}\n<p>{html.escape(_headline(summary))}</p>\n"
        f'<img alt="run report charts" src="data:image/png;base64,{image}">\n'
        f"{body}\n</body></html>\n"
    )


def write_report(
    summary: Summary, png_path: Path | str, *, html_path: Path | str | None = None
) -> list[Path]:
    """Write the PNG (and the HTML page if asked); return the paths written."""
    png = render_png(summary)
    outputs: list[tuple[Path, bytes]] = [(Path(png_path), png)]
    if html_path is not None:
        outputs.append((Path(html_path), render_html(summary, png).encode("utf-8")))
    for path, data in outputs:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        except OSError as exc:
            raise ConfigError(f"cannot write report {path}: {exc}") from exc
    return [path for path, _ in outputs]
