"""deploy/grafana/mmops-dashboard.json loads as is in Grafana (a dashboard with a datasource
variable, every query through it) and queries only metrics and labels that ``mmops serve``
really exports (mmops/entrypoints/metrics.py), every one of them at least once."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from mmops.entrypoints.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "mmops-dashboard.json"
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series
METRIC = re.compile(r"\bmmops_[a-z0-9_]+")


def exported() -> dict[str, tuple[str, set[str]]]:
    """Every sample name /metrics can carry → (its family, its label names)."""
    names: dict[str, tuple[str, set[str]]] = {}
    for collector in vars(Metrics()).values():
        if isinstance(collector, MetricWrapperBase):
            family, kind = collector._name, collector._type  # what the exposition writes
            labels = set(collector._labelnames)
            for suffix in SUFFIXES[kind]:
                names[family + suffix] = (
                    family,
                    labels | ({"le"} if suffix == "_bucket" else set()),
                )
    return names


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(expression, legend) of every panel target and every query variable."""
    found = [
        (t["expr"], t.get("legendFormat", "")) for p in panels(dashboard) for t in p["targets"]
    ]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            found.append((var["query"]["query"], ""))
    return found


def test_the_dashboard_is_a_grafana_dashboard_with_a_datasource_variable(
    dashboard: dict[str, Any],
) -> None:
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and dashboard["title"] and dashboard["id"] is None
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    through_variable = {"type": "prometheus", "uid": "${datasource}"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert panels(dashboard)
    for p in panels(dashboard):
        assert p["datasource"] == through_variable, p["title"]
        assert p["targets"], p["title"]
        assert all(t["datasource"] == through_variable and t["refId"] for t in p["targets"])
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, p["title"]
    for name in ("job", "session"):
        assert variables[name]["datasource"] == through_variable


def test_every_query_names_metrics_and_labels_that_metrics_py_exports(
    dashboard: dict[str, Any],
) -> None:
    names = exported()
    used: set[str] = set()
    for expr, legend in queries(dashboard):
        metrics = METRIC.findall(expr)
        assert metrics, expr
        unknown = [m for m in metrics if m not in names]
        assert unknown == [], f"{unknown} in {expr}: not exported by metrics.py"
        allowed = set(TARGET_LABELS)
        for m in metrics:
            family, labels = names[m]
            used.add(family)
            allowed |= labels | ({"exported_job"} if "job" in labels else set())
        matchers = re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", expr)
        grouped = [g.strip() for by in re.findall(r"by \(([^)]*)\)", expr) for g in by.split(",")]
        labels_of = re.findall(r"label_values\([^,]+,\s*(\w+)\)", expr)
        legends = re.findall(r"\{\{(\w+)\}\}", legend)
        for label in [*matchers, *grouped, *labels_of, *legends]:
            assert label in allowed, f"label {label!r} in {expr!r}: not a label of {metrics}"
    families = {family for family, _ in names.values()}
    assert used == families, f"not charted: {sorted(families - used)}"


def test_a_misspelt_metric_is_caught() -> None:
    """The check above can fail: a name metrics.py does not export is not in the table."""
    names = exported()
    assert "mmops_job_runs_total" in names and "mmops_coverage_percent" in names
    assert "mmops_job_runs" not in names  # a counter is exposed as _total
    assert "mmops_coverage_ratio" not in names
