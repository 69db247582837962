"""deploy/: Prometheus config, alert rules, Grafana dashboard — valid, and on our metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from iterrefine.observe.assets import (
    alert_expressions,
    dashboard_expressions,
    dashboard_panels,
    expand_grafana_variables,
    exported_series_names,
    metric_names,
)

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "iterrefine.json"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_UNIT_TESTS = ROOT / "tests" / "data" / "alerts_test.yml"

# The fixed metric names (docs/ARCHITECTURE.md "Observability"), with the series a
# histogram exposes; `up` is Prometheus' own scrape health.
_FAMILIES = {
    "iterrefine_items_total": "counter",
    "iterrefine_stage_seconds": "histogram",
    "iterrefine_inflight": "gauge",
    "iterrefine_consumer_lag": "gauge",
    "iterrefine_refine_rounds": "histogram",
    "iterrefine_llm_requests_total": "counter",
    "iterrefine_llm_seconds": "histogram",
    "iterrefine_llm_tokens_total": "counter",
    "iterrefine_llm_truncated_total": "counter",
    "iterrefine_llm_looped_total": "counter",
    "iterrefine_dlq_total": "counter",
    "iterrefine_quality_score": "histogram",
    "iterrefine_selection_items_total": "counter",
    "iterrefine_selection_high_share": "gauge",
    "iterrefine_selection_difficulty": "histogram",
    "iterrefine_selection_model_version": "gauge",
    "iterrefine_llm_answers_total": "counter",
    "iterrefine_rescore_failures_total": "counter",
    "iterrefine_llm_cache_total": "counter",
    "iterrefine_llm_cache_tokens_saved_total": "counter",
    "iterrefine_llm_circuit_open": "gauge",
}
FIXED_SERIES = frozenset(
    name + suffix
    for name, kind in _FAMILIES.items()
    for suffix in (("_bucket", "_sum", "_count") if kind == "histogram" else ("",))
)
ALLOWED = FIXED_SERIES | {"up"}

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (apt-get install prometheus); CI installs it",
)


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def _panel(title: str) -> dict[str, object]:
    matches = [p for p in dashboard_panels(DASHBOARD) if p.get("title") == title]
    assert len(matches) == 1, f"expected exactly one panel titled {title!r}"
    return matches[0]


def _panel_exprs(title: str) -> list[str]:
    targets = _panel(title).get("targets", [])
    assert isinstance(targets, list)
    return [t["expr"] for t in targets]


@pytest.mark.unit
def test_fixed_metric_list_matches_metrics_module() -> None:
    """The names deploy/ may use are exactly what iterrefine.observe.metrics exports."""
    assert exported_series_names() == FIXED_SERIES


@pytest.mark.unit
@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('up{job="iterrefine"} == 0', {"up"}),
        (
            'histogram_quantile(0.99, sum by (role, le) '
            '(rate(iterrefine_llm_seconds_bucket{role=~"strong|backbone"}[$__rate_interval])))',
            {"iterrefine_llm_seconds_bucket"},
        ),
        (
            "deriv(sum by (stage) (iterrefine_consumer_lag)[10m:1m]) > 1e3 "
            "and on (stage) sum(iterrefine_inflight) by (stage) or vector(0)",
            {"iterrefine_consumer_lag", "iterrefine_inflight"},
        ),
        ('sum(rate(iterrefine_item_total{outcome="up"}[5m]))', {"iterrefine_item_total"}),
    ],
)
def test_metric_names_are_parsed_out_of_promql(expr: str, names: set[str]) -> None:
    """Functions, keywords, label names/values, durations and Grafana variables are not metrics."""
    assert metric_names(expr) == names


@pytest.mark.unit
def test_dashboard_uses_only_fixed_metrics() -> None:
    """Every dashboard expression selects only known iterrefine series (or up)."""
    exprs = dashboard_expressions(DASHBOARD)
    assert len(exprs) >= 15
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric found in {expr!r}"
        assert names <= ALLOWED, f"unknown metric(s) {names - ALLOWED} in {expr!r}"


@pytest.mark.unit
def test_alerts_use_only_fixed_metrics() -> None:
    """Every alert expression selects only known iterrefine series (or up)."""
    exprs = alert_expressions(ALERTS)
    assert len(exprs) == 6
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric found in {expr!r}"
        assert names <= ALLOWED, f"unknown metric(s) {names - ALLOWED} in {expr!r}"


@pytest.mark.unit
def test_alerts_have_severity_and_annotations() -> None:
    """Each alert carries a severity label and summary/description annotations."""
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    assert {r["alert"] for r in rules} == {
        "IterrefineConsumerLagGrowing",
        "IterrefineDeadLettersHigh",
        "IterrefineLLMErrorRatioHigh",
        "IterrefineConvergenceRatioLow",
        "IterrefineWorkerDown",
        "IterrefineLLMCircuitOpen",
    }
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]
        assert "for" in rule, rule["alert"]


@pytest.mark.unit
def test_dashboard_is_provisionable() -> None:
    """Schema version, fixed datasource uid, no ${DS} input, unique panel ids."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["schemaVersion"] >= 38
    assert dashboard["uid"] == "iterrefine"
    assert "__inputs" not in dashboard
    assert "${DS" not in DASHBOARD.read_text(encoding="utf-8")
    panels = dashboard_panels(DASHBOARD)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "prometheus", panel["title"]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("title", "must_select"),
    [
        ("Throughput per stage", "iterrefine_items_total"),
        ("Outcomes", "iterrefine_items_total"),
        ("Rounds to convergence", "iterrefine_refine_rounds_bucket"),
        ("Consumer lag per stage", "iterrefine_consumer_lag"),
        ("In-flight per stage", "iterrefine_inflight"),
        ("LLM latency p50 / p95 / p99 by role", "iterrefine_llm_seconds_bucket"),
        ("Tokens per second by role", "iterrefine_llm_tokens_total"),
        ("LLM error ratio", "iterrefine_llm_requests_total"),
        ("DLQ rate by reason", "iterrefine_dlq_total"),
        ("Quality score before / after refinement", "iterrefine_quality_score_sum"),
    ],
)
def test_dashboard_has_required_panel(title: str, must_select: str) -> None:
    """The dashboard has each panel the runbook refers to, charting the right metric."""
    exprs = _panel_exprs(title)
    assert exprs
    assert any(must_select in metric_names(e) for e in exprs)


@pytest.mark.unit
def test_latency_panel_shows_three_quantiles_per_role() -> None:
    """LLM latency is histogram_quantile 0.5/0.95/0.99 grouped by role and le."""
    exprs = _panel_exprs("LLM latency p50 / p95 / p99 by role")
    for q in ("0.5", "0.95", "0.99"):
        assert any(e.startswith(f"histogram_quantile({q},") and "by (role, le)" in e for e in exprs)


@pytest.mark.unit
@pytest.mark.parametrize(
    "title", ["Quality score before / after refinement", "Quality score distribution (range)"]
)
def test_quality_panels_compare_score_and_align_stage(title: str) -> None:
    """Before = quality_score{stage="score"}, after = the align stage's re-score."""
    joined = " ".join(_panel_exprs(title))
    assert 'stage="score"' in joined
    assert 'stage="align"' in joined
    assert 'stage="review"' not in joined  # review observes no quality score


@pytest.mark.unit
def test_quality_stage_labels_are_the_ones_consumers_observe() -> None:
    """The stage labels the quality panels filter on are the ones consumers/ pass to labels()."""
    observed = set()
    for module in (ROOT / "consumers").glob("*.py"):
        observed |= set(re.findall(r'quality_score\.labels\("(\w+)"\)', module.read_text()))
    assert observed == {"score", "align"}
    charted = set()
    for title in ("Quality score before / after refinement", "Quality score distribution (range)"):
        for expr in _panel_exprs(title):
            charted |= set(re.findall(r'stage="(\w+)"', expr))
    assert charted == observed


@pytest.mark.unit
def test_error_ratio_counts_every_non_ok_status() -> None:
    """The LLM error ratio divides status!="ok" by all requests, per role."""
    (expr,) = _panel_exprs("LLM error ratio")
    assert 'status!="ok"' in expr
    assert "by (role)" in expr


@pytest.mark.unit
def test_prometheus_scrapes_every_stage_under_job_iterrefine() -> None:
    """The scrape job is named iterrefine and targets each compose service on :9100."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "iterrefine"]
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{s}:9100" for s in ("score", "route", "refine", "review", "align")}


@pytest.mark.unit
def test_grafana_provisioning_points_at_prometheus_and_dashboards() -> None:
    """Datasource uid prometheus at prometheus:9090; file provider at the mounted dir."""
    grafana = DEPLOY / "grafana" / "provisioning"
    (ds,) = yaml.safe_load((grafana / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert (ds["uid"], ds["type"], ds["url"]) == ("prometheus", "prometheus", "http://prometheus:9090")
    (provider,) = yaml.safe_load((grafana / "dashboards" / "iterrefine.yml").read_text())[
        "providers"
    ]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


@needs_promtool
def test_promtool_accepts_alert_rules() -> None:
    """promtool check rules passes on deploy/prometheus/alerts.yml."""
    result = _promtool("check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_accepts_prometheus_config() -> None:
    """promtool check config passes on deploy/prometheus/prometheus.yml (and its rule file)."""
    result = _promtool("check", "config", PROMETHEUS_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_alerts_fire_as_intended() -> None:
    """promtool's rule unit tests: each alert fires on its scenario and stays quiet otherwise."""
    result = _promtool("test", "rules", ALERT_UNIT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_dashboard_expressions_parse(tmp_path: Path) -> None:
    """Every dashboard query is valid PromQL once Grafana's interval variables are filled in."""
    rules = [
        {"record": f"dashboard:expr_{i}:check", "expr": expand_grafana_variables(expr)}
        for i, expr in enumerate(dashboard_expressions(DASHBOARD))
    ]
    assert all("$" not in rule["expr"] for rule in rules)
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = _promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
