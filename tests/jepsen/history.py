"""Histories of operations, Jepsen style: every operation is an `invoke` event followed by exactly one
completion, `ok` (it happened), `fail` (it certainly did not happen) or `info` (unknown: it may have
happened, at any time after its invocation). Events are kept in memory and written as JSON lines."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INF = math.inf


@dataclass(slots=True)
class Op:
    """One operation, its invocation and completion paired. `end` is infinite for an `info` op: it may
    take effect at any later time, so the checkers let it stay concurrent with everything after it."""

    id: int
    process: int | str
    f: str
    key: str | None
    arg: Any
    status: str  # ok | fail | info
    result: Any = None
    start: float = 0.0
    end: float = INF
    node: int | None = None
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def describe(self) -> str:
        end = "∞" if self.end == INF else f"{self.end:.3f}"
        res = "" if self.status != "ok" else f" -> {self.result!r}"
        return (f"[{self.start:.3f}, {end}] p{self.process} {self.f}({self.key}, {self.arg!r}){res} "
                f"{self.status}" + (f" ({self.error})" if self.error else ""))


class History:
    """Thread-safe recorder. Times are seconds since the history began, on the monotonic clock of the
    process that runs the clients (the only clock the checkers trust)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._open: dict[int, dict[str, Any]] = {}
        self._next = 0

    def now(self) -> float:
        return time.monotonic() - self.t0

    def invoke(self, process: int | str, f: str, key: str | None = None, value: Any = None) -> int:
        with self._lock:
            op_id = self._next
            self._next += 1
            ev = {"type": "invoke", "op": op_id, "process": process, "f": f, "key": key, "value": value,
                  "time": round(self.now(), 6)}
            self.events.append(ev)
            self._open[op_id] = ev
            return op_id

    def complete(self, op_id: int, status: str, value: Any = None, node: int | None = None, error: str = "",
                 **extra: Any) -> None:
        assert status in ("ok", "fail", "info"), status
        with self._lock:
            inv = self._open.pop(op_id)
            ev = {"type": status, "op": op_id, "process": inv["process"], "f": inv["f"], "key": inv["key"],
                  "value": value, "time": round(self.now(), 6)}
            if node is not None:
                ev["node"] = node
            if error:
                ev["error"] = error
            ev.update(extra)
            self.events.append(ev)

    def note(self, process: str, f: str, value: Any = None) -> None:
        """A nemesis or harness event (not an operation), e.g. the start or end of a fault."""
        with self._lock:
            self.events.append({"type": "info", "process": process, "f": f, "value": value,
                                "time": round(self.now(), 6)})

    def close_open(self) -> None:
        """Operations still running when the run ended are indeterminate."""
        for op_id in list(self._open):
            self.complete(op_id, "info", error="still running at the end of the run")

    def write(self, path: Path) -> None:
        with open(path, "w") as fh:
            for ev in self.events:
                fh.write(json.dumps(ev, default=repr) + "\n")

    def ops(self) -> list[Op]:
        return pair(self.events)


def pair(events: Iterable[dict[str, Any]]) -> list[Op]:
    """Pair invocations with completions (by op id, or by process as Jepsen does when ids are absent)."""
    open_by_id: dict[Any, dict[str, Any]] = {}
    open_by_process: dict[Any, Any] = {}
    out: list[Op] = []
    for n, ev in enumerate(events):
        if ev.get("process") == "nemesis" or "f" not in ev:
            continue
        oid = ev.get("op")
        if ev["type"] == "invoke":
            oid = n if oid is None else oid
            open_by_id[oid] = ev
            open_by_process[ev["process"]] = oid
            continue
        if oid is None:
            oid = open_by_process.pop(ev["process"], None)
        inv = open_by_id.pop(oid, None)
        if inv is None:
            continue
        status = ev["type"]
        out.append(Op(id=len(out), process=inv["process"], f=inv["f"], key=inv.get("key"), arg=inv.get("value"),
                      status=status, result=ev.get("value"), start=inv["time"],
                      end=INF if status == "info" else ev["time"], node=ev.get("node"), error=ev.get("error", ""),
                      extra={k: v for k, v in ev.items() if k not in _BASE}))
    for inv in open_by_id.values():
        out.append(Op(id=len(out), process=inv["process"], f=inv["f"], key=inv.get("key"), arg=inv.get("value"),
                      status="info", start=inv["time"]))
    out.sort(key=lambda o: o.start)
    return out


_BASE = {"type", "op", "process", "f", "key", "value", "time", "node", "error"}


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path) as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)
