"""Metric names in PromQL expressions (alert rules, dashboard panels), and the names raftkv exports.

`exported_names()` is derived from the registrations themselves (metrics.py and grpc_metrics.py on one
registry), so it includes metrics that have no sample until something happens (a labelled counter such
as a snapshot send). PENDING lists the names other parts of raftkv add that rules and panels already
query; a name leaves it when its metric lands."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry

PENDING: dict[str, str] = {}
FROM_PROMETHEUS = {"up"}
"""Series Prometheus makes itself for every target."""

_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
             "offset", "inf", "nan"}
_SUFFIXES = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_sum", "_count", "_created"], "gauge": [""],
             "summary": ["", "_sum", "_count"], "unknown": [""]}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (functions, keywords, label names and values left out)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    s = re.sub(r"\{[^}]*\}", "", s)  # label matchers
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\[[^\]]*\]", "", s)  # ranges
    out = set()
    for m in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", s):
        name, call = m.group(1), m.group(2)
        if not call and name.lower() not in _KEYWORDS:
            out.add(name)
    return out


def exported_names() -> set[str]:
    """Every sample name a raftkv node can export, whether or not it has a sample yet."""
    from raftkv.server.grpc_metrics import RequestMetrics
    from raftkv.server.metrics import Metrics

    m = Metrics(1)
    RequestMetrics(m.registry)
    return names_of(m.registry)


def names_of(registry: CollectorRegistry) -> set[str]:
    out = set()
    for fam in registry.collect():
        out |= {s.name for s in fam.samples}
        out |= {fam.name + suffix for suffix in _SUFFIXES.get(fam.type, [""])}
    return out
