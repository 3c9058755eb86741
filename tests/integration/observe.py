"""Looking at a running node from outside, as an operator would: its Prometheus /metrics page (parsed with
prometheus_client's own text parser) and its JSON log lines."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .local_cluster import LocalCluster


def scrape(cluster: LocalCluster, i: int, timeout: float = 5.0) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """GET /metrics of node i over HTTP: {sample name: {sorted label pairs: value}}."""
    url = f"http://127.0.0.1:{cluster.metrics_ports[i]}/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback test URL
        assert r.status == 200
        text = r.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def sample(metrics: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str) -> float:
    """One sample's value (0 when absent, as Prometheus treats a counter not yet created)."""
    return metrics.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def log_events(cluster: LocalCluster, i: int) -> list[dict[str, Any]]:
    """Node i's structured log lines (the JSON ones; `Error:` lines and the like are skipped)."""
    out = []
    for line in cluster.log_text(i).splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def events_named(cluster: LocalCluster, i: int, event: str) -> list[dict[str, Any]]:
    return [e for e in log_events(cluster, i) if e.get("event") == event]


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0, every: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
