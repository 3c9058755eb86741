"""The checkers checked: hand-made and generated histories with known anomalies must be flagged, and
known-good ones must pass. Fast, no namespaces, no processes."""

from __future__ import annotations

import random
import time

from .checkers.bank import check_bank
from .checkers.linearizable import check_register, linearizable, shrink
from .checkers.session import check_session
from .checkers.sets import check_set
from .checkers.staleness import check_staleness
from .history import INF, History, Op, pair

_ids = iter(range(10**9))


def op(f: str, key: str | None, arg: object, result: object, start: float, end: float, status: str = "ok",
       process: int | str = 0, node: int | None = None) -> Op:
    return Op(next(_ids), process, f, key, arg, status, result, start, INF if status == "info" else end, node)


def w(v: int, s: float, e: float, status: str = "ok", key: str = "x") -> Op:
    return op("write", key, v, None, s, e, status)


def r(v: int | None, s: float, e: float, key: str = "x") -> Op:
    return op("read", key, None, v, s, e)


def cas(old: int, new: int, ok: bool | None, s: float, e: float, status: str = "ok") -> Op:
    return op("cas", "x", [old, new], ok, s, e, status)


# -------------------------------------------------------------------------------- linearizability
def test_sequential_history_passes() -> None:
    assert linearizable([w(1, 0, 1), r(1, 2, 3), w(2, 4, 5), r(2, 6, 7)]).ok is True


def test_stale_read_is_flagged() -> None:
    # write 2 completed before the read began, yet the read saw 1
    v = check_register([w(1, 0, 1), w(2, 2, 3), r(1, 4, 5)])
    assert v.valid is False
    assert v.anomalies[0]["type"] == "nonlinearizable"


def test_read_of_never_written_value_is_flagged() -> None:
    assert check_register([w(1, 0, 1), r(7, 2, 3)]).valid is False


def test_read_before_any_write_sees_nothing() -> None:
    assert linearizable([r(None, 0, 1), w(1, 2, 3), r(1, 4, 5)]).ok is True
    assert linearizable([w(1, 0, 1), r(None, 2, 3)]).ok is False


def test_concurrent_ops_may_take_effect_in_either_order() -> None:
    # both writes overlap both reads: 2 then 1 is a valid order
    assert linearizable([w(1, 0, 10), w(2, 0, 10), r(2, 1, 2), r(1, 3, 4)]).ok is True
    # but once a read saw 1 after 2, a later read cannot see 2 again (no write of 2 left to explain it)
    assert linearizable([w(1, 0, 10), w(2, 0, 10), r(2, 1, 2), r(1, 3, 4), r(2, 5, 6)]).ok is False


def test_indeterminate_write_may_take_effect_late_or_never() -> None:
    late = [w(1, 0, 1), w(2, 2, 3, status="info"), r(1, 4, 5), r(2, 6, 7)]
    assert linearizable(late).ok is True
    never = [w(1, 0, 1), w(2, 2, 3, status="info"), r(1, 4, 5), r(1, 6, 7)]
    assert linearizable(never).ok is True
    # ... but not before it was invoked
    early = [w(1, 0, 1), r(2, 1.5, 1.8), w(2, 2, 3, status="info")]
    assert linearizable(early).ok is False


def test_duplicate_write_is_flagged() -> None:
    # one write of 1, overwritten by 2, then 1 is read again: 1 was applied twice
    assert check_register([w(1, 0, 1), w(2, 2, 3), r(2, 4, 5), r(1, 6, 7)]).valid is False


def test_cas_semantics() -> None:
    assert linearizable([w(1, 0, 1), cas(1, 2, True, 2, 3), r(2, 4, 5)]).ok is True
    assert linearizable([w(1, 0, 1), cas(3, 2, True, 2, 3)]).ok is False  # succeeded on a wrong value
    assert linearizable([w(1, 0, 1), cas(1, 2, False, 2, 3)]).ok is False  # failed on the right value
    assert linearizable([w(1, 0, 1), cas(1, 2, None, 2, 3, "info"), r(2, 4, 5)]).ok is True


def test_counterexample_is_small() -> None:
    noise = [w(100 + i, 10 + 2 * i, 11 + 2 * i, key="x") for i in range(30)]
    noise += [r(100 + i, 10.5 + 2 * i, 11.5 + 2 * i) for i in range(30)]
    bad = [w(1, 100, 101), w(2, 102, 103), r(1, 104, 105)]
    ops = noise + bad
    v = check_register(ops)
    assert v.valid is False
    cex = v.anomalies[0]["counterexample"]
    assert len(cex) <= 4, cex
    assert any("read" in line and "-> 1" in line for line in cex)
    assert len(shrink(ops)) <= 4


def generated_register(n_ops: int, seed: int, processes: int = 6, keys: int = 3, info_rate: float = 0.02
                       ) -> list[Op]:
    """A linearizable history by construction: every op takes effect at a point inside its interval."""
    rng = random.Random(seed)
    state: dict[str, int | None] = {f"k{i}": None for i in range(keys)}
    busy_until = [0.0] * processes
    t, out, value = 0.0, [], 0
    while len(out) < n_ops:
        t += rng.expovariate(50.0)
        free = [p for p in range(processes) if busy_until[p] < t]
        if not free:
            continue
        p = rng.choice(free)
        key = rng.choice(list(state))
        start = rng.uniform(busy_until[p], t)
        end = t + rng.expovariate(20.0)
        busy_until[p] = end
        roll = rng.random()
        if roll < 0.5:
            out.append(op("read", key, None, state[key], start, end, process=p))
        elif roll < 0.8:
            value += 1
            status = "info" if rng.random() < info_rate else "ok"
            if status == "ok" or rng.random() < 0.5:  # an unknown write took effect, or never did
                state[key] = value
            out.append(op("write", key, value, None, start, end, status, process=p))
        else:
            value += 1
            old = state[key] if rng.random() < 0.5 else value - 2
            ok = state[key] == old
            if ok:
                state[key] = value
            out.append(op("cas", key, [old, value], ok, start, end, process=p))
    return out


def test_generated_histories_pass_and_mutations_fail() -> None:
    for seed in range(20):
        ops = generated_register(300, seed)
        assert check_register(ops).valid is True, seed
        reads = [o for o in ops if o.f == "read" and o.result is not None]
        victim = random.Random(seed).choice(reads)
        victim.result = -5  # never written
        assert check_register(ops).valid is False, seed


def test_generated_stale_reads_fail() -> None:
    flagged = 0
    for seed in range(20):
        ops = generated_register(300, seed, info_rate=0)
        # make a read return the value the key had two writes earlier, long after newer writes completed
        by_key = [o for o in ops if o.key == "k0" and o.f == "write"]
        late = max(ops, key=lambda o: o.end if o.end != INF else 0)
        stale = op("read", "k0", None, by_key[len(by_key) // 2].arg, late.end + 1, late.end + 2)
        flagged += check_register(ops + [stale]).valid is False
    assert flagged == 20


def test_ten_thousand_operations() -> None:
    ops = generated_register(10_000, seed=99)
    started = time.monotonic()
    v = check_register(ops)
    elapsed = time.monotonic() - started
    print(f"\n10k-op register history checked in {elapsed:.2f}s ({v.stats['configurations_explored']} configurations)")
    assert v.valid is True
    assert v.ops_checked == 10_000


# -------------------------------------------------------------------------------- sets
def add(e: int, s: float, e_: float, status: str = "ok", key: str = "s") -> Op:
    return op("add", key, e, None, s, e_, status)


def final(items: list[int], t: float = 100, key: str = "s") -> Op:
    return op("final-read", key, None, items, t, t + 1, process="final")


def test_set_good_history_passes() -> None:
    v = check_set([add(1, 0, 1), add(2, 0, 1), add(3, 1, 2, "info"), add(4, 1, 2, "fail"), final([1, 2])])
    assert v.valid is True and v.stats["lost"] == 0 and v.stats["indeterminate"] == 1


def test_lost_write_is_flagged() -> None:
    v = check_set([add(1, 0, 1), add(2, 0, 1), final([1])])
    assert v.valid is False and v.stats["lost"] == 1
    assert v.anomalies[0]["type"] == "lost" and v.anomalies[0]["elements"] == [2]


def test_lost_leader_acked_writes_are_counted_not_failed() -> None:
    v = check_set([add(1, 0, 1), add(2, 0, 1), final([1])], expect_loss=True)
    assert v.valid is True and v.stats["lost"] == 1


def test_duplicate_and_unexpected_elements_are_flagged() -> None:
    assert check_set([add(1, 0, 1), final([1, 1])]).anomalies[0]["type"] == "duplicate"
    assert check_set([add(1, 0, 1), final([1, 9])]).anomalies[0]["type"] == "unexpected"


def test_set_stale_read_is_flagged() -> None:
    v = check_set([add(1, 0, 1), op("read", "s", None, [], 2, 3), final([1])])
    assert v.valid is False and v.anomalies[0]["type"] == "stale-read"


def test_missing_final_read_is_flagged() -> None:
    assert check_set([add(1, 0, 1)]).valid is False


# -------------------------------------------------------------------------------- bank
ACCOUNTS = ["a", "b", "c"]


CREATED = 7  # the log index of the transaction that created the accounts


def bank_read(bal: dict[str, int], t: float, f: str = "read", consistency: str = "linearizable",
              applied: int | None = 20) -> Op:
    o = op(f, None, {"consistency": consistency}, bal, t, t + 0.1)
    if applied is not None:
        o.extra["applied"] = applied
    return o


def bank_setup() -> Op:
    return op("setup", None, None, {"index": CREATED}, -1, -0.9, process="setup")


def test_bank_good_history_passes() -> None:
    ops = [bank_setup(), bank_read({"a": 10, "b": 10, "c": 10}, 0), bank_read({"a": 5, "b": 15, "c": 10}, 1),
           bank_read({}, 1.5, consistency="serializable", applied=CREATED - 1),
           bank_read({"a": 0, "b": 20, "c": 10}, 2, "final-read")]
    v = check_bank(ops, ACCOUNTS, 30)
    assert v.valid is True and v.stats["empty_serializable_reads"] == 1


def test_bank_empty_read_from_a_node_that_applied_the_accounts_is_flagged() -> None:
    fin = bank_read({"a": 10, "b": 10, "c": 10}, 9, "final-read")
    for applied in (CREATED, CREATED + 30):
        v = check_bank([bank_setup(), bank_read({}, 1, consistency="serializable", applied=applied), fin],
                       ACCOUNTS, 30)
        assert v.valid is False and "empty serializable read" in v.anomalies[0]["problems"][0]
    # Without the applied index (or the creation index) nothing shows the node was behind: not excused.
    v = check_bank([bank_setup(), bank_read({}, 1, consistency="serializable", applied=None), fin], ACCOUNTS, 30)
    assert v.valid is False
    v = check_bank([bank_read({}, 1, consistency="serializable", applied=0), fin], ACCOUNTS, 30)
    assert v.valid is False


def test_broken_bank_total_is_flagged() -> None:
    ops = [bank_read({"a": 10, "b": 10, "c": 10}, 0), bank_read({"a": 5, "b": 10, "c": 10}, 1),
           bank_read({"a": 10, "b": 10, "c": 10}, 2, "final-read")]
    v = check_bank(ops, ACCOUNTS, 30)
    assert v.valid is False and "total 25 != 30" in v.anomalies[0]["problems"]


def test_bank_negative_and_missing_accounts_are_flagged() -> None:
    fin = bank_read({"a": 10, "b": 10, "c": 10}, 9, "final-read")
    assert check_bank([bank_read({"a": -5, "b": 25, "c": 10}, 0), fin], ACCOUNTS, 30).valid is False
    assert check_bank([bank_read({"a": 20, "b": 10}, 0), fin], ACCOUNTS, 30).valid is False
    # an empty linearizable read is not excused: the accounts existed before the run began
    assert check_bank([bank_read({}, 0), fin], ACCOUNTS, 30).valid is False


# -------------------------------------------------------------------------------- session
def sw(p: int, key: str, counter: int, rev: int, t: float) -> Op:
    return op("write", key, counter, rev, t, t + 0.1, process=p)


def sr(p: int, key: str, value: int | None, rev: int, t: float, node: int) -> Op:
    return op("read", key, {"node": node}, {"value": value, "rev": rev}, t, t + 0.1, process=p, node=node)


def test_session_good_history_passes() -> None:
    ops = [sw(0, "p0", 1, 10, 0), sr(0, "p0", 1, 10, 1, node=2), sr(0, "p1", 5, 8, 2, node=3),
           sw(0, "p0", 2, 12, 3), sr(0, "p0", 2, 12, 4, node=1), sr(0, "p1", 6, 11, 5, node=2),
           sr(1, "p0", None, 0, 0.5, node=3)]
    v = check_session(ops)
    assert v.valid is True and v.stats["node_switches"] >= 3


def test_read_your_writes_violation_is_flagged() -> None:
    v = check_session([sw(0, "p0", 1, 10, 0), sw(0, "p0", 2, 12, 1), sr(0, "p0", 1, 10, 2, node=3)])
    assert v.valid is False and v.anomalies[0]["type"] == "read-your-writes"


def test_session_regression_is_flagged() -> None:
    v = check_session([sr(0, "p1", 6, 11, 0, node=1), sr(0, "p1", 5, 8, 1, node=2)])
    assert v.valid is False and v.anomalies[0]["type"] == "monotonic-reads"


# -------------------------------------------------------------------------------- staleness
def stw(c: int, s: float, e: float) -> Op:
    return op("write", "k", c, None, s, e, process=0)


def str_(v: int | None, s: float, bound_ms: int = 300) -> Op:
    return op("read", "k", {"max_staleness_ms": bound_ms}, v, s, s + 0.01, process=1)


def test_reads_within_the_bound_pass() -> None:
    ops = [stw(1, 0, 0.1), stw(2, 1.0, 1.1), str_(1, 1.2), str_(1, 1.39), str_(2, 1.41), str_(None, 0.05)]
    assert check_staleness(ops).valid is True


def test_read_staler_than_the_bound_is_flagged() -> None:
    v = check_staleness([stw(1, 0, 0.1), stw(2, 1.0, 1.1), str_(1, 1.5)])
    assert v.valid is False and v.anomalies[0]["type"] == "stale-beyond-bound"


def test_staleness_read_of_never_written_value_is_flagged() -> None:
    v = check_staleness([stw(1, 0, 0.1), str_(5, 0.2)])
    assert v.valid is False and v.anomalies[0]["type"] == "never-written"


def test_an_indeterminate_write_applied_late_is_not_a_stale_read() -> None:
    # Write 2's reply was lost (its request sat in a cut link's TCP buffer) and it took effect only after
    # writes 3 and 4: reading 2 then is the present, not the past.
    late = op("write", "k", 2, None, 1.0, 2.0, status="info", process=0)
    ops = [stw(1, 0, 0.1), late, stw(3, 2.1, 2.2), stw(4, 2.3, 2.4), str_(2, 3.0), str_(4, 3.1)]
    assert check_staleness(ops).valid is True


def test_an_indeterminate_write_already_seen_bounds_what_may_be_read_later() -> None:
    # Write 2 was seen by a read at 1.5, so it took effect before 3 and 4 were even sent: reading 2 again
    # at 3.0 is 0.8 s behind write 4.
    late = op("write", "k", 2, None, 1.0, 2.0, status="info", process=0)
    ops = [stw(1, 0, 0.1), late, str_(2, 1.5), stw(3, 2.1, 2.2), stw(4, 2.3, 2.4), str_(2, 3.0)]
    v = check_staleness(ops)
    assert v.valid is False and v.anomalies[0]["type"] == "stale-beyond-bound"
    assert v.anomalies[0]["required_at_least"] == 4


# -------------------------------------------------------------------------------- history
def test_history_pairs_events_and_leaves_unfinished_ops_indeterminate(tmp_path) -> None:  # noqa: ANN001
    h = History()
    a = h.invoke(0, "write", "x", 1)
    h.complete(a, "ok")
    h.invoke(1, "write", "x", 2)
    h.note("nemesis", "start", {"fault": "kill"})
    h.close_open()
    h.write(tmp_path / "h.jsonl")
    ops = h.ops()
    assert [(o.arg, o.status) for o in ops] == [(1, "ok"), (2, "info")]
    assert ops[1].end == INF
    # Jepsen-style events without op ids pair by process
    evs = [{"type": "invoke", "process": 3, "f": "read", "key": "x", "value": None, "time": 0.0},
           {"type": "ok", "process": 3, "f": "read", "key": "x", "value": 1, "time": 0.5}]
    assert pair(evs)[0].result == 1


def test_counterexample_of_a_write_applied_twice() -> None:
    """The anomaly the suite found (register, kill -9 of the leader): a put retried after its first copy
    had been committed was applied again after a cas had replaced its value."""
    ops = [w(1314, 12.10, 12.17), r(1314, 12.21, 12.24), w(1324, 12.517, 12.549), r(1324, 12.528, 12.565),
           w(1328, 12.565, 13.357), r(1328, 12.591, 13.176), cas(1328, 1330, True, 13.186, 13.191),
           cas(1328, 1333, False, 13.237, 13.246), r(1330, 13.300, 13.312), w(1338, 13.322, 13.337),
           r(1338, 13.347, 13.354), r(1328, 13.347, 13.358), r(1328, 13.365, 13.370), w(1341, 13.368, 13.396),
           r(1341, 13.381, 13.455)]
    v = check_register(ops)
    assert v.valid is False
    cex = v.anomalies[0]["counterexample"]
    assert len(cex) == 3, cex
    assert "write(x, 1328)" in cex[0] and "cas(x, [1328, 1330]) -> True" in cex[1] and "-> 1328" in cex[2]


def test_session_write_of_unknown_outcome_landing_late_is_not_a_violation() -> None:
    """Found in a run with partitions: a write that timed out was applied seconds later, after the
    process's next write; reads then rightly show it, with a newer revision."""
    late = op("write", "p0", 1, None, 0, 1, "info", process=0)
    v = check_session([late, sw(0, "p0", 2, 12, 1.5), sr(0, "p0", 2, 12, 2, node=1), sr(0, "p0", 1, 15, 3, node=2)])
    assert v.valid is True


def test_watch_prev_kv_must_be_the_keys_event_before() -> None:
    from . import workloads  # noqa: F401 - loads coordination.py as the suite does (the two import each other)
    from .coordination import PAD, _unpad, _wrong_prevs

    events = [(5, "watch/k1", "1"), (6, "watch/k2", "2"), (7, "watch/k1", "3"), (8, "watch/end", "end")]
    assert _wrong_prevs(events, [None, None, "1", None], "watch/k") == []
    wrong = _wrong_prevs(events, [None, "1", "2", None], "watch/k")  # k2 had no value; k1's was 1
    assert [(x["revision"], x["expected"]) for x in wrong] == [(6, None), (7, "1")]
    assert _unpad(f"7:{PAD}".encode()) == "7" and _unpad(f"7:{PAD[:-1]}y".encode()) == "damaged:7"
