"""Admission control: high and low watermarks over what a node's requests cost in memory and latency,
the pressure level derived from them, and the refusal a request over the high mark gets (DESIGN.md §6).

Each resource has a usage (read from the host when asked, or counted here), a high mark and a low mark.
Once its usage reaches the high mark the resource is *overloaded* and stays so until usage falls to the
low mark (hysteresis: a node at its limit does not flap between refusing and accepting on every request).
While any write resource is overloaded, new writes are refused at once with `Overloaded` (the api turns it
into RESOURCE_EXHAUSTED, reason OVERLOADED, naming the resource, with a `grpc-retry-pushback-ms` hint);
reads have their own budget (`read_waiters`), so an overload of writes does not stop reads.

The pressure level is GREEN below 50 % of every high mark, YELLOW below 80 %, RED at or above 80 % or
while a resource is overloaded. It is recomputed after every host round and on every admission, and a
change of level is logged once per transition.

Resources (the name is what ErrorInfo's `resource` and the metrics' `resource` label say):
- `proposals`, `proposal_bytes`: writes admitted on this node and not yet applied (or failed);
- `unapplied`: entries committed here and not yet applied;
- `follower_queue_bytes`: bytes queued to the followers a commit needs (the quorum-th least backed-up
  follower; one stopped follower alone does not stop writes, its own queue is bounded by the transport);
- `ack_waiters`: committed writes waiting for a semi_sync or sync acknowledgement;
- `queue_delay_ms`: how long a write admitted now would wait for its answer, from the writes in flight and
  the rate this node answers them (queue_delay.py): the mark that bounds latency, not memory;
- `read_waiters`: reads waiting for a read round, an applied index or a staleness proof (read budget);
- more may be added with `Admission.add_resource` (watch buffers: `budget="read"` or `"write"`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import structlog

from .queue_delay import QueueDelay

log = structlog.get_logger("raftkv.admission")

YELLOW_AT = 0.5
RED_AT = 0.8
PUSHBACK_MAX_FACTOR = 10


class Level(IntEnum):
    GREEN = 0
    YELLOW = 1
    RED = 2


class Overloaded(Exception):
    """A request refused before it did anything, because `resource` is over its high watermark. Safe to
    retry (on this node after `pushback_ms`, or elsewhere)."""

    def __init__(self, resource: str, usage: int, high: int, pushback_ms: int, budget: str) -> None:
        what = {"write": "writes", "read": "reads", "watch": "watches"}.get(budget, budget)
        super().__init__(f"node overloaded: {resource} at {usage} (high watermark {high}); new {what} are "
                         f"refused until it drains; retry after {pushback_ms} ms")
        self.resource = resource
        self.usage = usage
        self.high = high
        self.pushback_ms = pushback_ms
        self.budget = budget


@dataclass(slots=True)
class Watermark:
    """One resource's marks and its hysteresis state."""

    name: str
    usage: Callable[[], int]
    high: int
    low: int
    budget: str  # "write" or "read": which requests it refuses
    live: bool = True
    """Read on every admission; False: only after each host round (it changes only there)."""
    over: bool = False
    refused: int = 0
    last: int = 0

    def check(self) -> int:
        """Read the usage, move the overloaded state (on at the high mark, off at the low mark)."""
        u = self.usage()
        self.last = u
        if u >= self.high:
            self.over = True
        elif self.over and u <= self.low:
            self.over = False
        return u

    def fraction(self) -> float:
        return self.last / self.high if self.high > 0 else 0.0


@dataclass(slots=True)
class Limits:
    """High watermarks per resource; each low mark is `low_ratio` of its high mark."""

    proposals: int = 4096
    proposal_bytes: int = 64 << 20
    unapplied: int = 5000
    follower_queue_bytes: int = 64 << 20
    ack_waiters: int = 4096
    read_waiters: int = 8192
    watch_events: int = 200_000
    queue_delay_ms: int = 250
    """0: no queue-delay mark."""
    low_ratio: float = 0.5
    pushback_ms: int = 100
    extra: dict[str, int] = field(default_factory=dict)


def quorum_queue(queued: list[int], voters: int) -> int:
    """Bytes queued to the follower a commit waits for: with `voters` voters (the leader among them) a
    commit needs `voters // 2` followers, so the `voters // 2`-th least backed-up follower's queue."""
    need = voters // 2
    if need <= 0 or not queued:
        return 0
    ranked = sorted(queued)
    return ranked[min(need, len(ranked)) - 1]


class Admission:
    """The watermarks of one node. `of(host)` gives the node's one instance, created on first use."""

    _by_host: weakref.WeakKeyDictionary[Any, Admission] = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, host: Any) -> Admission:
        adm = cls._by_host.get(host)
        if adm is None:
            adm = cls(host, limits_from(host.cfg))
            cls._by_host[host] = adm
        return adm

    def __init__(self, host: Any, limits: Limits) -> None:
        self.host = host
        self.limits = limits
        self.proposals = 0
        self.proposal_bytes = 0
        self.read_waiters = 0
        self.delay = QueueDelay()
        self.level = Level.GREEN
        self.transitions = 0
        self.marks: dict[str, Watermark] = {}
        self._budgets: dict[str, list[Watermark]] = {"write": [], "read": [], "watch": []}
        self.add_resource("proposals", lambda: self.proposals, limits.proposals)
        self.add_resource("proposal_bytes", lambda: self.proposal_bytes, limits.proposal_bytes)
        # These two move only when the host loop runs a round: read there (`evaluate`), not per request.
        self.add_resource("unapplied", self._unapplied, limits.unapplied).live = False
        self.add_resource("follower_queue_bytes", self._follower_queue, limits.follower_queue_bytes).live = False
        self.add_resource("ack_waiters", lambda: host.waiters.durable_waiting, limits.ack_waiters)
        self.add_resource("read_waiters", lambda: self.read_waiters, limits.read_waiters, budget="read")
        if limits.queue_delay_ms > 0:
            delay = self.delay
            self.add_resource("queue_delay_ms", lambda: delay.usage_ms(self.proposals), limits.queue_delay_ms)
        if hasattr(host, "every_round_any_role"):
            host.every_round_any_role(self.evaluate)
        metrics = getattr(host, "metrics", None)
        if metrics is not None and hasattr(metrics, "watch_pressure"):
            metrics.watch_pressure(self)

    # -- the hook for other resources (watch buffers) -----------------------------------------------
    def add_resource(self, name: str, usage: Callable[[], int], high: int, budget: str = "write") -> Watermark:
        """Watch one more resource: `usage()` is read on every evaluation (cheap, loop thread);
        `high` its high mark (a `Limits.extra[name]` overrides it), the low mark follows `low_ratio`."""
        high = self.limits.extra.get(name, high)
        wm = Watermark(name, usage, high, int(high * self.limits.low_ratio), budget)
        self.marks[name] = wm
        self._budgets.setdefault(budget, []).append(wm)
        return wm

    # -- usage read from the host ------------------------------------------------------------------
    def _unapplied(self) -> int:
        return max(0, self.host.node.raft_log.committed - self.host.applied)

    def _follower_queue(self) -> int:
        host = self.host
        if not host.is_leader:
            return 0
        queued = getattr(host.transport, "queued_bytes", None)
        if queued is None:
            return 0
        conf = host.node.conf
        voters = [nid for nid in conf.voters if nid != host.cfg.id]
        return quorum_queue([queued(nid) for nid in voters], len(conf.voters))

    def follower_queues(self) -> dict[int, int]:
        """Entry bytes queued to each peer now (for the metrics; read on any thread)."""
        transport = self.host.transport
        queued = getattr(transport, "queued_bytes", None)
        peers = getattr(transport, "peer_ids", None)
        if queued is None or peers is None:
            return {}
        try:
            return {nid: queued(nid) for nid in peers()}
        except RuntimeError:  # the peer set changed while we read it (another thread): next scrape
            return {}

    def dropped(self) -> int:
        """Messages the transport refused to queue for a peer (its queue was full): that peer was probed."""
        return int(getattr(self.host.transport, "dropped", 0))

    # -- evaluation --------------------------------------------------------------------------------
    def evaluate(self) -> Level:
        """Re-read every usage, update hysteresis and the level; log a change of level once."""
        self.delay.on_round(self.proposals)
        worst = 0.0
        any_over = False
        for wm in self.marks.values():
            wm.check()
            worst = max(worst, wm.fraction())
            any_over = any_over or wm.over
        level = Level.RED if any_over or worst >= RED_AT else Level.YELLOW if worst >= YELLOW_AT else Level.GREEN
        if level != self.level:
            self.transitions += 1
            top = max(self.marks.values(), key=lambda w: (w.over, w.fraction()))
            event = log.warning if level > self.level else log.info
            event("pressure level changed", pressure=level.name, previous=self.level.name, resource=top.name,
                  usage=top.last, high=top.high, overloaded=sorted(w.name for w in self.marks.values() if w.over))
            self.level = level
        return level

    def usage(self) -> dict[str, tuple[int, int, bool]]:
        """{resource: (usage, high mark, overloaded)} as last evaluated."""
        return {n: (w.last, w.high, w.over) for n, w in self.marks.items()}

    def _refusal(self, budget: str) -> Overloaded | None:
        """The refusal for a new request of `budget`, or None. Only that budget's marks are read here (on
        every request, so kept cheap); the level follows after each host round, and at once on a refusal."""
        for wm in self._budgets[budget]:
            u = wm.usage() if wm.live else wm.last
            wm.last = u
            if u >= wm.high:
                wm.over = True
            elif wm.over and u <= wm.low:
                wm.over = False
            if wm.over:
                wm.refused += 1
                if self.level != Level.RED:  # at RED already the level cannot change: no need to re-read
                    self.evaluate()
                return Overloaded(wm.name, wm.last, wm.high, self.pushback_ms(wm), budget)
        return None

    def pushback_ms(self, wm: Watermark) -> int:
        """The retry hint: the base pause, longer the further the resource is over its low mark."""
        base = self.limits.pushback_ms
        if wm.low <= 0:
            return base
        return int(base * min(PUSHBACK_MAX_FACTOR, max(1.0, wm.last / max(1, wm.low) - 1)))

    # -- admission ----------------------------------------------------------------------------------
    def check_write(self) -> None:
        """Raise Overloaded if a new write must be refused now."""
        err = self._refusal("write")
        if err is not None:
            raise err

    def check_read(self) -> None:
        err = self._refusal("read")
        if err is not None:
            raise err

    def check_watch(self) -> None:
        """Raise Overloaded if a new watch must be refused now (the events queued for watchers are over
        their mark: one more watch could only queue more). Watches already open go on."""
        err = self._refusal("watch")
        if err is not None:
            raise err

    @contextmanager
    def writes(self, count: int, nbytes: int) -> Iterator[None]:
        """Admit `count` writes of `nbytes` in all (or raise Overloaded), and count them in flight until
        the block ends (applied, failed, or the caller went away)."""
        self.check_write()
        self.proposals += count
        self.proposal_bytes += nbytes
        try:
            yield
        finally:
            self.proposals -= count
            self.proposal_bytes -= nbytes
            self.delay.answered += count

    @contextmanager
    def read(self) -> Iterator[None]:
        """Admit one read (or raise Overloaded) and count it waiting until the block ends."""
        self.check_read()
        self.read_waiters += 1
        try:
            yield
        finally:
            self.read_waiters -= 1


def limits_from(cfg: Any) -> Limits:
    """The node's limits from its settings (`--overload-*`); defaults where a setting is absent."""
    d = Limits()
    return Limits(
        proposals=getattr(cfg, "overload_max_proposals", d.proposals),
        proposal_bytes=getattr(cfg, "overload_max_proposal_bytes", d.proposal_bytes),
        unapplied=getattr(cfg, "overload_max_unapplied", d.unapplied),
        follower_queue_bytes=getattr(cfg, "overload_max_follower_queue_bytes", d.follower_queue_bytes),
        ack_waiters=getattr(cfg, "overload_max_ack_waiters", d.ack_waiters),
        read_waiters=getattr(cfg, "overload_max_read_waiters", d.read_waiters),
        watch_events=getattr(cfg, "overload_max_watch_events", d.watch_events),
        queue_delay_ms=getattr(cfg, "overload_max_queue_delay_ms", d.queue_delay_ms),
        low_ratio=getattr(cfg, "overload_low_ratio", d.low_ratio),
        pushback_ms=getattr(cfg, "overload_pushback_ms", d.pushback_ms),
    )
