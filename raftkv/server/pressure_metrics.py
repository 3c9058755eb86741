"""Prometheus view of admission control (layers/admission.py): the pressure level and, per resource, its
usage, high watermark, whether it is overloaded, and how many requests it refused.

Read at scrape time on the metrics thread from the values the loop last computed (plain attributes):
nothing is evaluated off the loop."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class PressureSource(Protocol):
    level: int
    marks: dict[str, Any]

    def follower_queues(self) -> dict[int, int]: ...

    def dropped(self) -> int: ...


class _Idle:
    """What is exported before admission control is bound (GREEN, no resources yet)."""

    level = 0
    marks: dict[str, Any] = {}

    def follower_queues(self) -> dict[int, int]:
        return {}

    def dropped(self) -> int:
        return 0


class PressureCollector(Collector):
    """Registered with the node's metrics from the start (so every name it exports is known up front);
    `source` is bound once admission control exists."""

    def __init__(self, source: PressureSource | None = None) -> None:
        self.source: PressureSource = source or _Idle()

    def collect(self) -> Iterator[Any]:
        src = self.source
        yield GaugeMetricFamily("raftkv_pressure_level",
                                "Admission pressure of this node: 0 GREEN, 1 YELLOW, 2 RED", value=int(src.level))
        usage = GaugeMetricFamily("raftkv_overload_usage", "What a resource watched by admission control holds now",
                                  labels=["resource"])
        high = GaugeMetricFamily("raftkv_overload_high_watermark",
                                 "Usage at which a resource refuses new requests", labels=["resource"])
        over = GaugeMetricFamily("raftkv_overload_active",
                                 "1 while a resource refuses new requests (until it drains to its low mark)",
                                 labels=["resource"])
        refused = CounterMetricFamily("raftkv_overload_refused", "Requests refused as OVERLOADED, by resource",
                                      labels=["resource"])
        for name, wm in list(src.marks.items()):
            usage.add_metric([name], wm.last)
            high.add_metric([name], wm.high)
            over.add_metric([name], 1 if wm.over else 0)
            refused.add_metric([name], wm.refused)
        queues = GaugeMetricFamily("raftkv_peer_queue_bytes",
                                   "Entry bytes queued to a peer, not yet on its stream (bounded by "
                                   "--overload-max-follower-queue-bytes)", labels=["peer"])
        for nid, n in sorted(src.follower_queues().items()):
            queues.add_metric([str(nid)], n)
        yield queues
        yield CounterMetricFamily("raftkv_peer_messages_dropped",
                                  "Messages not queued for a peer whose queue was full (the peer is then probed "
                                  "and catches up from the log)", value=src.dropped())
        yield usage
        yield high
        yield over
        yield refused
