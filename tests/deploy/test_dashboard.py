"""deploy/grafana/raftkv-dashboard.json: well-formed JSON of a Grafana dashboard whose every panel
queries Prometheus with PromQL that promtool parses, naming only metrics raftkv exports (checked against a
live node's /metrics in tests/integration/test_operations_view.py), and the panels the README promises."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from .promql import PENDING, exported_names, metric_names
from .test_alert_rules import promtool

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "raftkv-dashboard.json"
PROMISED = {"raftkv_is_leader", "raftkv_term", "grpc_server_handled_total", "grpc_server_handling_seconds_bucket",
            "raftkv_fsync_duration_seconds_bucket", "raftkv_replication_lag_entries", "raftkv_replication_lag_seconds",
            "raftkv_pressure_level", "process_resident_memory_bytes"}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def expressions() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard()["panels"] for t in p["targets"]]


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    d = dashboard()
    assert d["title"] and d["uid"] and isinstance(d["schemaVersion"], int)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in d["panels"]:
        assert p["type"] in {"timeseries", "stat"} and p["title"] and p["targets"], p
        assert p["datasource"]["type"] == "prometheus"
        g = p["gridPos"]
        assert 0 <= g["x"] < 24 and g["x"] + g["w"] <= 24 and g["h"] > 0
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])
    variables = {v["name"] for v in d["templating"]["list"]}
    for _, expr in expressions():
        for var in {w.lstrip("$") for w in expr.split('"') if w.startswith("$")}:
            assert var in variables, f"{expr} uses ${var}, which the dashboard does not define"


def test_promtool_parses_every_expression(tmp_path: Path) -> None:
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:panel{i}", "expr": expr} for i, (_, expr) in enumerate(expressions())]}]}
    f = tmp_path / "dashboard-exprs.yaml"
    f.write_text(yaml.safe_dump(rules))
    r = subprocess.run([promtool(), "check", "rules", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_expression_names_a_metric_raftkv_exports() -> None:
    known = exported_names() | set(PENDING)
    used: set[str] = set()
    for title, expr in expressions():
        names = metric_names(expr)
        assert names, f"{title}: {expr} names no metric"
        assert not names - known, f"{title}: {names - known} is not a metric raftkv exports"
        used |= names
    assert PROMISED <= used, f"panels promised but missing: {PROMISED - used}"
