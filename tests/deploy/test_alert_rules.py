"""deploy/prometheus/raftkv-alerts.yaml: valid for Prometheus (`promtool check rules`), each rule firing on
the series its unit tests give and staying quiet on the others (`promtool test rules`), and every metric
it queries one raftkv exports (or one Prometheus makes, or one another part of raftkv is adding)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from .promql import FROM_PROMETHEUS, PENDING, exported_names, metric_names

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = RULES_DIR / "raftkv-alerts.yaml"
RULE_TESTS = RULES_DIR / "raftkv-alerts.test.yaml"
EXPECTED_ALERTS = {"RaftkvNoLeader", "RaftkvFrequentLeaderChanges", "RaftkvProposalFailures",
                   "RaftkvHighFsyncDuration", "RaftkvReplicationLagCritical", "RaftkvSemiSyncDegraded",
                   "RaftkvMemberDown", "RaftkvCorruptAlarm", "RaftkvNoSpaceAlarm", "RaftkvPressureRed",
                   "RaftkvSlowWatchers", "RaftkvEventLoopStalls"}


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: install Debian's prometheus package (tests/install_system_deps.sh does)"
    return path


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_promtool_accepts_the_rules() -> None:
    r = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in r.stdout


def test_every_rule_passes_its_unit_tests() -> None:
    r = subprocess.run([promtool(), "test", "rules", RULE_TESTS.name], capture_output=True, text=True,
                       timeout=60, cwd=RULES_DIR)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_is_there_and_tested_both_ways() -> None:
    assert {r["alert"] for r in rules()} == EXPECTED_ALERTS
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired: dict[str, set[str]] = {}
    quiet: set[str] = set()
    for t in tests:
        for case in t["alert_rule_test"]:
            name = case["alertname"]
            instances = {a["exp_labels"]["instance"] for a in case["exp_alerts"]}
            fired.setdefault(name, set()).update(instances)
            if not case["exp_alerts"]:
                quiet.add(name)
            # A node whose series are in the test but that is not expected to fire must stay quiet
            # (promtool fails the test on any alert not listed).
            nodes = {m for s in t["input_series"] for m in re.findall(r'instance="([^"]+)"', s["series"])}
            if nodes - instances:
                quiet.add(name)
    for alert in EXPECTED_ALERTS:
        assert fired.get(alert), f"{alert}: no test in which it fires"
        assert alert in quiet, f"{alert}: no test in which it must stay quiet"


def test_every_metric_a_rule_queries_exists() -> None:
    known = exported_names() | FROM_PROMETHEUS | set(PENDING)
    for r in rules():
        missing = metric_names(r["expr"]) - known
        assert not missing, f"{r['alert']} queries {missing}, which raftkv does not export"


def test_pending_names_are_not_exported_yet() -> None:
    """Once the metric lands, it leaves PENDING (and this test reminds whoever adds it)."""
    exported = exported_names()
    for name in sorted(PENDING):
        assert name not in exported, f"{name} is exported now: remove it from tests/deploy/promql.py PENDING"
