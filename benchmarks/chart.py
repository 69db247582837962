"""Draw a ``run.py`` result as one PNG: wall times, simulator load over time, the rest.

``python benchmarks/chart.py results/latest.json -o results/latest.png`` (``run.py --out``
draws it beside the JSON by itself).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use(): the backend must be chosen first

COLORS = {"iterrefine": "#1f77b4", "baseline": "#d62728", "bound": "#7f7f7f",
          "loop": "#2ca02c", "bytes": "#98df8a", "async": "#aec7e8"}


def _e2e_walls(ax: Any, e2e: dict[str, Any]) -> None:
    ours, base, bound = e2e["iterrefine"], e2e["baseline"], e2e["lower_bound"]
    names = ["lower bound", "iterrefine", "batch baseline"]
    ax.barh(0, bound["lower_bound_s"], color=COLORS["bound"])
    ax.barh(1, ours["wall_s"], color=COLORS["iterrefine"])
    ax.barh(1, ours["startup_s"], left=ours["wall_s"], color=COLORS["iterrefine"], alpha=0.3,
            label="iterrefine startup (group joins, not in the ratio)")
    left = 0.0
    shades = ["#f4a3a3", "#e87070", "#d62728", "#9b1c1c"]
    for phase, shade in zip(base["phases"], shades, strict=False):
        ax.barh(2, phase["seconds"], left=left, color=shade)
        ax.text(left + phase["seconds"] / 2, 2, f"{phase['phase']}\n{phase['threads']} thr",
                ha="center", va="center", fontsize=7, color="white")
        left += phase["seconds"]
    for y, value in enumerate([bound["lower_bound_s"], ours["wall_s"], base["wall_s"]]):
        ax.text(value, y, f" {value:.1f} s", va="center", fontsize=8)
    ax.set_yticks(range(3), names)
    ax.set_xlabel("wall time (s)")
    ax.set_xlim(0, base["wall_s"] * 1.18)
    params = e2e["parameters"]
    ax.set_title(f"Reference workload: {params['items']} low items, "
                 f"{params['sim']['latency_ms']:.0f} ms, capacity {params['sim']['capacity']}\n"
                 f"iterrefine / lower bound = {e2e['ratio']:.2f} (target ≤ 1.3), "
                 f"baseline / iterrefine = {e2e['speedup']:.2f}×", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    ax.set_ylim(2.6, -0.9)


def _series(ax: Any, series: dict[str, list[float]], label: str, color: str) -> None:
    ax.plot(series["t_s"], series["mean"], color=color, label=label, linewidth=1.2)


def _e2e_series(ax: Any, e2e: dict[str, Any]) -> None:
    capacity = e2e["parameters"]["sim"]["capacity"]
    _series(ax, e2e["iterrefine"]["sim_series"], "iterrefine", COLORS["iterrefine"])
    _series(ax, e2e["baseline"]["sim_series"], "batch baseline", COLORS["baseline"])
    ax.axhline(capacity, color=COLORS["bound"], linestyle="--", linewidth=0.8,
               label=f"capacity {capacity}")
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("LLM requests being served")
    ax.set_title("Reference workload: simulator concurrency (100 ms means)", fontsize=9)
    ax.legend(fontsize=7)


def _utilization(ax: Any, util: dict[str, Any]) -> None:
    capacity = util["parameters"]["sim"]["capacity"]
    series = util["sim_series"]
    _series(ax, series, "iterrefine", COLORS["iterrefine"])
    ax.plot(series["t_s"], series["queued"], color=COLORS["iterrefine"], alpha=0.35,
            linewidth=0.8, label="queued at the simulator")
    ax.axhline(capacity, color=COLORS["bound"], linestyle="--", linewidth=0.8,
               label=f"capacity {capacity}")
    window = util["steady_state"].get("window_s")
    if window:
        ax.axvspan(window[0], window[1], color="#ffdd99", alpha=0.35, label="steady state")
    value = util["llm_utilization"]
    shown = f"{value:.3f}" if value is not None else "n/a"
    ax.set_title(f"LLM utilisation, {util['parameters']['items']} items, "
                 f"capacity {capacity}: {shown} in steady state (target ≥ 0.9)", fontsize=9)
    ax.set_xlabel("seconds since ingest started")
    ax.set_ylabel("requests")
    ax.legend(fontsize=7)


def _passthrough(ax: Any, pt: dict[str, Any]) -> None:
    contenders = pt["contenders"]
    names = list(contenders)
    values = [contenders[n]["items_per_s"] for n in names]
    palette = {"runtime": COLORS["iterrefine"], "runtime_async": COLORS["async"],
               "aiokafka_loop": COLORS["loop"], "aiokafka_loop_bytes": COLORS["bytes"]}
    colors = [palette.get(n, COLORS["bound"]) for n in names]
    ax.bar(range(len(names)), values, color=colors)
    for x, (name, value) in enumerate(zip(names, values, strict=True)):
        ax.text(x, value, f"{value:,.0f}/s\n{contenders[name]['cpu_us_per_item']:.0f} µs CPU",
                ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names], fontsize=8)
    ax.set_ylabel("items per second")
    ax.set_ylim(0, max(values) * 1.3)
    ax.set_title(f"Pass-through hop, {pt['parameters']['items']:,} items: "
                 f"runtime / plain loop = {pt.get('ratio', float('nan')):.2f} (target ≥ 0.7)",
                 fontsize=9)


def _backlog(ax: Any, backlog: dict[str, Any]) -> None:
    for size, run in backlog["by_backlog"].items():
        series = run["rss_series_s_mb"]
        ax.plot([p[0] for p in series], [p[1] for p in series],
                label=f"{int(size):,} items: peak {run['peak_rss_mb']:.0f} MB")
    ax.set_xlabel("seconds since the stage process started")
    ax.set_ylabel("RSS (MB)")
    ax.set_ylim(0, max(330.0, backlog["peak_rss_mb"] * 1.15))
    ax.axhline(300, color=COLORS["bound"], linestyle="--", linewidth=0.8, label="target 300 MB")
    ax.set_title(f"One {backlog['parameters']['stage']} stage process draining a backlog "
                 f"(peak ×{backlog['peak_rss_growth']:.2f} for ×"
                 f"{max(backlog['parameters']['sizes']) // min(backlog['parameters']['sizes'])}"
                 " the backlog)", fontsize=9)
    ax.legend(fontsize=7)


def _overhead(ax: Any, overhead: dict[str, Any]) -> None:
    profile = overhead.get("profile")
    if profile:
        shares = sorted(((v, k) for k, v in profile["shares"].items() if v >= 0.01),
                        reverse=True)
        ax.barh(range(len(shares)), [v * overhead["overhead_us_per_item_hop"] for v, _ in shares],
                color=COLORS["iterrefine"])
        ax.set_yticks(range(len(shares)), [k for _, k in shares], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("µs of CPU per item-hop (py-spy shares × total)")
    else:
        split = overhead.get("split", {})
        parts = {"runtime (a task per message)": split.get("runtime_us_per_hop", 0),
                 "LLM path": split.get("llm_path_us_per_hop", 0)}
        ax.barh(range(len(parts)), list(parts.values()), color=COLORS["iterrefine"])
        ax.set_yticks(range(len(parts)), list(parts), fontsize=8)
        ax.set_xlabel("µs of CPU per item-hop")
    ax.set_title(f"CPU per item-hop, zero-latency LLM: "
                 f"{overhead['overhead_us_per_item_hop']:.0f} µs "
                 f"({overhead['llm_calls_per_hop']:.2f} LLM calls per hop)", fontsize=9)


def draw(result: dict[str, Any], out: Path) -> None:
    scenarios = result["scenarios"]
    fig, axes = plt.subplots(3, 2, figsize=(14, 13))
    panels = [("e2e", _e2e_walls), ("e2e", _e2e_series), ("utilization", _utilization),
              ("passthrough", _passthrough), ("backlog", _backlog), ("overhead", _overhead)]
    for ax, (name, panel) in zip(axes.flat, panels, strict=True):
        if name in scenarios and "error" not in scenarios[name]:
            panel(ax, scenarios[name])
        else:
            ax.text(0.5, 0.5, f"{name}: not run", ha="center", va="center")
            ax.set_axis_off()
    machine = result["machine"]
    mode = "quick" if result["parameters"]["quick"] else "full"
    fig.suptitle(
        f"iterrefine benchmarks ({mode}), {result['date']} — {machine['cores']} cores "
        f"({machine['cpu_model']}), Python {machine['python']}, "
        f"load avg {result['loadavg_start']} → {result['loadavg_end']}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", type=Path)
    parser.add_argument("-o", "--out", type=Path)
    args = parser.parse_args()
    draw(json.loads(args.result.read_text()), args.out or args.result.with_suffix(".png"))


if __name__ == "__main__":
    main()
