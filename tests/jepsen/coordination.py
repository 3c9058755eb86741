"""Partition-suite workloads of watch, leases and fenced locks (their checkers are here too: each judges
what its own workload recorded).

- `watch`: writers put unique values; watchers (each with its own client, resuming across node switches)
  record every event. Every acknowledged write must appear once on every watcher, with its revision, in
  revision order; no event may carry a value nobody wrote (a phantom).
- `lease`: each worker grants a short lease, attaches a key, keeps it alive for a while reading the key,
  then lets it lapse and watches for the key to go. No key may vanish while its lease is kept alive (a read
  finding it gone less than a TTL after an acknowledged keep-alive was sent); none may outlive its last
  keep-alive by more than the documented bound (README: TTL, plus a TTL per leader change: judged here
  with room for two).
- `lock`: workers take one lock, read a counter, sometimes "pause" past the lock's TTL (their keep-alive
  stopped), then write counter + 1 with a fenced Txn (the lock key's create revision must equal the
  token) that also logs the token. No fenced write of a stale holder may be accepted: accepted values are
  distinct and consecutive, and their tokens increase with them.
"""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Any

from raftkv.client import Client, RaftKVError, op_put
from raftkv.client.lock import fence_compare

from .checkers import Verdict
from .history import History, Op
from .workloads import Workload

FENCED = os.environ.get("RAFTKV_JEPSEN_UNFENCED", "") == ""
"""RAFTKV_JEPSEN_UNFENCED=1 drops the fence from the lock workload's writes: the run must then FAIL (the
checker's own test, that it catches what fencing prevents)."""


# -------------------------------------------------------------------------------------------------
PAD = "x" * 2000
"""Watched values are longer than a history row copies in (1 KiB): each event's previous value is read
from the key's previous event (storage/history.py), through crashes, restarts and snapshots."""


class WatchWorkload(Workload):
    name = "watch"
    workers = 3
    watchers = 3
    prefix = "watch/"

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.seen: dict[int, list[tuple[int, str, str]]] = {i: [] for i in range(self.watchers)}
        self.prevs: dict[int, list[str | None]] = {i: [] for i in range(self.watchers)}
        """Each seen event's previous value (None: the key had none), beside `seen`."""
        self.served_by: dict[int, set[int]] = {i: set() for i in range(self.watchers)}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._clients: list[Client] = []
        self.start_rev = 0
        self.errors: list[str] = []

    def setup(self, client: Client) -> None:
        self.start_rev = client.put(self.prefix + "start", "0").meta.index
        addresses = list(client.endpoints.addresses)
        for i in range(self.watchers):
            order = addresses[i % len(addresses):] + addresses[: i % len(addresses)]
            t = threading.Thread(target=self._watch, args=(i, order), daemon=True)
            t.start()
            self._threads.append(t)

    def _watch(self, i: int, order: list[str]) -> None:
        c = Client(",".join(order), timeout=10)
        self._clients.append(c)
        with c:
            after = self.start_rev
            while not self._stop.is_set():
                try:
                    for r in c.watch(self.prefix, prefix=True, after_revision=after, progress_interval_ms=500,
                                     prev_kv=True):
                        self.served_by[i].add(r.served_by)
                        for e in r.events:
                            self.seen[i].append((e.kv.mod_revision, e.kv.key.decode(), _unpad(e.kv.value)))
                            self.prevs[i].append(_unpad(e.prev_kv.value) if e.HasField("prev_kv") else None)
                        after = max(after, r.revision)
                        if self._stop.is_set():
                            return
                except RaftKVError as e:  # the client gave up for a while (every node unreachable): again
                    if self._stop.is_set():
                        return
                    self.errors.append(f"watcher {i}: {e}")
                    time.sleep(0.5)

    def stop(self) -> None:
        """A watcher waits in its stream, which outlives the nodes (it reconnects): closing its client ends
        the stream, and the watch with it."""
        self._stop.set()
        for c in list(self._clients):
            c.close()
        for t in self._threads:
            t.join(timeout=10)
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise RuntimeError(f"watchers still running 10 s after their clients closed: {alive}")

    def step(self, p: int, client: Client, h: History, rng: random.Random, endpoints: list[str]) -> None:
        key = f"{self.prefix}k{rng.randrange(5)}"
        v = self.unique()
        self.write(h, p, "write", key, v, lambda: client.put(key, f"{v}:{PAD}"), lambda rep: rep.meta.index)

    def final(self, client: Client, h: History) -> None:
        end = None
        deadline = time.monotonic() + 30
        while end is None and time.monotonic() < deadline:
            try:
                end = client.put(self.prefix + "end", "end").meta.index
            except RaftKVError:
                time.sleep(0.3)
        while end is not None and time.monotonic() < deadline:
            if all(s and s[-1][0] >= end for s in self.seen.values()):
                break
            time.sleep(0.1)
        self.end_rev = end
        self._stop.set()

    def check(self, ops: list[Op]) -> list[Verdict]:
        v = Verdict("watch-every-write-once-in-order", True)
        written = {(o.key, str(o.arg)) for o in ops if o.f == "write"}
        acked = [(o.result, o.key, str(o.arg)) for o in ops if o.f == "write" and o.ok]
        v.ops_checked = len(acked)
        end = getattr(self, "end_rev", None)
        if end is None:
            v.valid = False
            v.anomalies.append({"type": "no-final-write", "message": "the cluster took no write after healing"})
        for i, events in self.seen.items():
            revs = [r for r, _, _ in events]  # one key per write: one event per revision
            if any(b <= a for a, b in zip(revs, revs[1:], strict=False)):
                v.valid = False
                v.anomalies.append({"type": "out-of-order-or-repeated", "watcher": i, "revisions": revs[:200]})
            got = {(r, k, val) for r, k, val in events}
            missing = [a for a in acked if a not in got]
            if missing:
                v.valid = False
                v.anomalies.append({"type": "lost-event", "watcher": i, "missing": missing[:20],
                                    "count": len(missing)})
            phantoms = [(r, k, val) for r, k, val in events
                        if k.startswith(self.prefix + "k") and (k, val) not in written]
            if phantoms:
                v.valid = False
                v.anomalies.append({"type": "phantom-event", "watcher": i, "events": phantoms[:20]})
            wrong_prev = _wrong_prevs(events, self.prevs[i], self.prefix + "k")
            if wrong_prev:
                v.valid = False
                v.anomalies.append({"type": "wrong-prev-kv", "watcher": i, "events": wrong_prev[:20],
                                    "count": len(wrong_prev)})
            if end is not None and (not revs or revs[-1] < end):
                v.valid = False
                v.anomalies.append({"type": "watcher-behind", "watcher": i, "last": revs[-1] if revs else None,
                                    "end": end})
        v.stats = {"events": {i: len(s) for i, s in self.seen.items()},
                   "served_by": {i: sorted(s) for i, s in self.served_by.items()},
                   "watch_errors": len(self.errors)}
        return [v]


def _unpad(value: bytes) -> str:
    """A watched value without its padding ("damaged:..." if the padding is not what was written)."""
    text = value.decode()
    head, sep, pad = text.partition(":")
    return head if not sep or pad == PAD else f"damaged:{head}"


def _wrong_prevs(events: list[tuple[int, str, str]], prevs: list[str | None],
                 written_prefix: str) -> list[dict[str, Any]]:
    """Events whose previous value is not the value of their key's event before (each key is first
    written after the watch starts, and a watcher sees every event once, in order)."""
    last: dict[str, str] = {}
    wrong = []
    for (rev, key, val), prev in zip(events, prevs, strict=True):
        if key.startswith(written_prefix) and prev != last.get(key):
            wrong.append({"revision": rev, "key": key, "prev_kv": prev, "expected": last.get(key)})
        last[key] = val
    return wrong


# -------------------------------------------------------------------------------------------------
class LeaseWorkload(Workload):
    name = "lease"
    workers = 4
    ttl = 2
    bound_s = 3 * ttl + 3.0
    """Room for TTL after the last keep-alive plus two leader changes (a TTL each) and a little slack."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.lapsed: list[dict[str, Any]] = []
        self._lock2 = threading.Lock()

    def step(self, p: int, client: Client, h: History, rng: random.Random, endpoints: list[str]) -> None:
        key = f"lease/{p}/{self.unique()}"
        status, lease = self.write(h, p, "grant", key, self.ttl, lambda: client.lease_grant(self.ttl),
                                   lambda rep: rep.id)
        if status != "ok":
            return
        status, _ = self.write(h, p, "put", key, lease, lambda: client.put(key, "v", lease=lease))
        if status != "ok":
            return
        until = time.monotonic() + rng.uniform(1.0, 4.0)
        last_ka = None
        while time.monotonic() < until:
            st, _ = self.write(h, p, "keep-alive", key, lease, lambda: client.lease_keep_alive_once(lease, timeout=1.0))
            if st == "ok":
                last_ka = h.now()
            self.read(h, p, "read", key, lease, lambda: client.get(key), lambda rep: rep.found)
            time.sleep(0.3)
        # Let it lapse: poll until the key is gone (or give up: the final reads judge it).
        give_up = time.monotonic() + self.bound_s + 10
        while time.monotonic() < give_up:
            st, found = self.read(h, p, "read", key, lease, lambda: client.get(key), lambda rep: rep.found)
            if st == "ok" and not found:
                break
            time.sleep(0.2)
        with self._lock2:
            self.lapsed.append({"key": key, "last_keep_alive": last_ka})

    def final(self, client: Client, h: History) -> None:
        time.sleep(self.bound_s)
        for item in list(self.lapsed):
            key = item["key"]
            self.final_retry(lambda key=key: self.read(h, "final", "read", key, None, lambda: client.get(key),
                                                       lambda rep: rep.found))

    def check(self, ops: list[Op]) -> list[Verdict]:
        alive = Verdict("lease-no-key-vanishes-while-kept-alive", True)
        bound = Verdict("lease-key-gone-within-bound", True)
        by_key: dict[str, list[Op]] = {}
        for o in ops:
            if o.key is not None and o.key.startswith("lease/"):
                by_key.setdefault(o.key, []).append(o)
        worst = 0.0
        for key, kops in by_key.items():
            kas = [o for o in kops if o.f == "keep-alive" and o.ok]
            puts = [o for o in kops if o.f == "put" and o.ok]
            if not puts:
                continue
            reads = [o for o in kops if o.f == "read" and o.ok]
            for r in reads:
                if r.result:
                    continue
                # Gone: was a keep-alive acknowledged that was sent less than a TTL before this read ended?
                # (It renewed the lease at or after it was sent; the lease then lasts a TTL at least.)
                if r.start < puts[0].end:
                    continue
                recent = [k for k in kas if k.start <= r.end < k.start + self.ttl - 0.2]
                if recent:
                    alive.valid = False
                    alive.anomalies.append({"type": "vanished-while-kept-alive", "key": key, "read": r.describe(),
                                            "keep_alive": recent[-1].describe()})
            last = max([k.start for k in kas] + [puts[0].start])
            gone = [r for r in reads if not r.result and r.start >= last]
            present_after = [r for r in reads if r.result and r.start >= last]
            if gone:
                took = min(r.end for r in gone) - last
            elif present_after:
                took = max(r.start for r in present_after) - last
            else:
                continue
            worst = max(worst, took)
            if took > self.bound_s:
                bound.valid = False
                bound.anomalies.append({"type": "outlived-lease", "key": key, "seconds": round(took, 2),
                                        "bound": self.bound_s})
            finals = [r for r in reads if r.process == "final"]
            if finals and finals[-1].result:
                bound.valid = False
                bound.anomalies.append({"type": "never-deleted", "key": key})
        alive.ops_checked = bound.ops_checked = len(by_key)
        bound.stats = {"worst_seconds_after_last_keep_alive": round(worst, 2), "bound_seconds": self.bound_s}
        return [alive, bound]


# -------------------------------------------------------------------------------------------------
class LockWorkload(Workload):
    name = "lock"
    workers = 3
    ttl = 2
    counter = "lockw/counter"

    def setup(self, client: Client) -> None:
        client.put(self.counter, "0")

    def step(self, p: int, client: Client, h: History, rng: random.Random, endpoints: list[str]) -> None:
        op = h.invoke(p, "lock", "lockw", None)
        try:
            lk = client.lock("lockw", ttl=self.ttl, timeout=10)
        except RaftKVError as e:  # not taken (or taken and let go: its lease ends on its own)
            h.complete(op, "fail", error=str(e)[:160])
            return
        h.complete(op, "ok", lk.token)
        try:
            st, cur = self.read(h, p, "read", self.counter, lk.token, lambda: client.get(self.counter),
                                lambda rep: int(rep.kv.value))
            if st != "ok":
                return
            if rng.random() < 0.3:  # a holder paused past its TTL: its lease lapses, another takes the lock
                lk.keep_alive.stop()
                time.sleep(self.ttl * 1.5)
            new = cur + 1
            ops = [op_put(self.counter, str(new)), op_put(f"lockw/log/{new}", str(lk.token))]
            # The fence alone guards the read-modify-write (no compare on the counter's value): a stale
            # holder's write would land on the newer holder's work, and the checker would see it.
            cmp = [fence_compare(lk.key, lk.token)] if FENCED else []
            self.write(h, p, "fenced-write", self.counter, [lk.token, new],
                       lambda: client.txn(cmp, ops), lambda rep: rep.succeeded)
        finally:
            lk.keep_alive.stop()
            try:
                client.lease_revoke(lk.lease_id, timeout=2)
            except RaftKVError:
                pass

    def final(self, client: Client, h: History) -> None:
        self.final_retry(lambda: self.read(h, "final", "read", self.counter, None, lambda: client.get(self.counter),
                                           lambda rep: int(rep.kv.value)))

    def check(self, ops: list[Op]) -> list[Verdict]:
        v = Verdict("lock-fenced-counter", True)
        accepted = sorted((o.arg[1], o.arg[0], o) for o in ops if o.f == "fenced-write" and o.ok and o.result)
        maybe = [o for o in ops if o.f == "fenced-write" and o.status == "info"]
        v.ops_checked = len(accepted)
        values = [a[0] for a in accepted]
        if len(set(values)) != len(values):
            v.valid = False
            v.anomalies.append({"type": "duplicate-increment", "values": values})
        tokens = [a[1] for a in accepted]
        if any(b <= a for a, b in zip(tokens, tokens[1:], strict=False)):
            v.valid = False
            v.anomalies.append({"type": "stale-token-accepted", "pairs": [(a[0], a[1]) for a in accepted]})
        finals = [o for o in ops if o.process == "final" and o.ok]
        if finals:
            final = finals[-1].result
            if not len(values) <= final <= len(values) + len(maybe) or (values and max(values) > final):
                v.valid = False
                v.anomalies.append({"type": "counter-mismatch", "final": final, "accepted": len(values),
                                    "indeterminate": len(maybe)})
        else:
            v.valid = False
            v.anomalies.append({"type": "no-final-read"})
        refused = sum(1 for o in ops if o.f == "fenced-write" and o.ok and not o.result)
        v.stats = {"accepted": len(values), "refused_stale": refused, "indeterminate": len(maybe)}
        return [v]


COORDINATION_WORKLOADS: dict[str, type[Workload]] = {w.name: w for w in (WatchWorkload, LeaseWorkload,
                                                                         LockWorkload)}
