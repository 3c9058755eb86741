"""How `kv status` shows a node's admission-control pressure: its level, and the resources over their
high watermark (refusing) or nearest to it."""

from __future__ import annotations

from typing import Any


def pressure_cell(s: Any) -> str:
    """`GREEN`, or `RED (proposals 4/4 refusing)`: the level and the busiest resource when not GREEN."""
    level = s.pressure or "-"
    if level in ("GREEN", "-") or not s.overload:
        return level
    top = max(s.overload, key=lambda r: (r.overloaded, r.usage / r.high_watermark if r.high_watermark else 0))
    return f"{level} ({top.resource} {top.usage}/{top.high_watermark}{' refusing' if top.overloaded else ''})"


def status_error(client: Any, endpoint: str, err: Exception | None) -> dict[str, Any]:
    """`kv -w json status` for an endpoint that did not answer: `error` (still "unreachable"), what the
    client saw, and the endpoint's circuit breaker (state, consecutive failures, times opened)."""
    breaker = client.resilience.breaker(endpoint).stats()
    return {"error": "unreachable", "message": str(err).splitlines()[0] if err else "", "breaker": breaker}
