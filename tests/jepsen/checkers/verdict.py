"""What every checker returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Verdict:
    """`valid` is True (the guarantee held), False (an anomaly was found) or None (the checker could not
    decide within its budget; never reported as a pass)."""

    checker: str
    valid: bool | None
    ops_checked: int = 0
    anomalies: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return {True: "PASS", False: "FAIL", None: "UNKNOWN"}[self.valid]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
