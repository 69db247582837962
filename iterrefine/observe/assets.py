"""Read the PromQL that deploy/ ships, so tests can hold it to the metrics we export.

The Grafana dashboard (``deploy/grafana/dashboards/*.json``) and the alert rules
(``deploy/prometheus/alerts.yml``) name metrics by string; nothing but a test
notices when one drifts from :mod:`iterrefine.observe.metrics`. This module extracts
their expressions, the metric names inside them, and the series names our
registry really exports. A live test can also evaluate every expression against
a Prometheus that scraped a pipeline run, after :func:`expand_grafana_variables`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from iterrefine.observe.metrics import Metrics

__all__ = [
    "alert_expressions",
    "dashboard_expressions",
    "dashboard_panels",
    "expand_grafana_variables",
    "exported_series_names",
    "metric_names",
]

# Series a histogram or counter family exposes, by family type. ``_created`` is
# left out on purpose: nothing should chart it.
_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}

_PROMQL_KEYWORDS = frozenset(
    {
        "and", "or", "unless", "by", "without", "on", "ignoring",
        "group_left", "group_right", "bool", "offset", "atan2",
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_MATCHERS = re.compile(r"\{[^{}]*\}")
# `by (stage, le)`, `on (stage)`, `group_left (x)`: label lists, not metrics.
_LABEL_LIST = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_RANGE = re.compile(r"\[[^\[\]]*\]")
# An identifier not glued to a number, `$`, `.` or another identifier (that rules
# out durations like 5m, Grafana's $__rate_interval and 1e3).
_IDENTIFIER = re.compile(r"(?<![\w.$:])[A-Za-z_:][\w:]*")
_FUNCTION_CALL = re.compile(r"\s*\(")
_GRAFANA_VARIABLE = re.compile(r"\$__(rate_interval|interval|range)\b")


def exported_series_names(metrics: Metrics | None = None) -> frozenset[str]:
    """Every series name our registry exposes (``iterrefine_llm_seconds_bucket``, ...)."""
    metrics = metrics if metrics is not None else Metrics(CollectorRegistry())
    names: set[str] = set()
    for family in metrics.registry.collect():
        for suffix in _SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
    return frozenset(names)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (functions, keywords and labels removed)."""
    text = _STRING.sub('""', expr)
    text = _LABEL_MATCHERS.sub("", text)
    text = _LABEL_LIST.sub(" ", text)
    text = _RANGE.sub("", text)
    names: set[str] = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group()
        if word.lower() in _PROMQL_KEYWORDS or word in {"inf", "Inf", "NaN", "nan"}:
            continue
        if _FUNCTION_CALL.match(text, match.end()):
            continue  # rate(, histogram_quantile(, sum( ...
        names.add(word)
    return names


def _walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        # Collapsed rows keep their children inside the row.
        yield from _walk_panels(panel.get("panels", []))


def dashboard_panels(path: Path | str) -> list[dict[str, Any]]:
    """All panels of a Grafana dashboard JSON file, rows and their children flattened."""
    dashboard = json.loads(Path(path).read_text(encoding="utf-8"))
    return list(_walk_panels(dashboard.get("panels", [])))


def dashboard_expressions(path: Path | str) -> list[str]:
    """Every PromQL ``expr`` of the dashboard's targets, in panel order, Grafana variables kept."""
    return [
        target["expr"]
        for panel in dashboard_panels(path)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def alert_expressions(path: Path | str) -> list[str]:
    """Every ``expr`` of a Prometheus rules file (alerting and recording rules)."""
    import yaml  # pyyaml is a test extra; the workers never read rule files

    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return [
        str(rule["expr"]).strip()
        for group in doc.get("groups", [])
        for rule in group.get("rules", [])
        if "expr" in rule
    ]


def expand_grafana_variables(
    expr: str, *, rate_interval: str = "1m", interval: str = "15s", range_: str = "1h"
) -> str:
    """Replace Grafana's built-in interval variables so that Prometheus can run ``expr``."""
    values = {"rate_interval": rate_interval, "interval": interval, "range": range_}
    return _GRAFANA_VARIABLE.sub(lambda m: values[m.group(1)], expr)
