"""Client sessions in the state machine (storage/sessions.py): a retried (session, sequence) is answered
with its first result and applied once; results kept per session are bounded; expiry is decided by the
committed command; session records never show in ranges."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from raftkv.storage import commands, sessions, state_machine
from raftkv.storage.commands import Delete, Put, Range, Txn
from raftkv.storage.errors import ResultNotKept, SessionUnknown


class DictView:
    def __init__(self) -> None:
        self.d: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.d.get(key)

    def put(self, key: bytes, body: bytes) -> None:
        self.d[key] = body

    def delete(self, key: bytes) -> None:
        self.d.pop(key, None)

    def scan(self, start: bytes) -> Iterator[tuple[bytes, bytes]]:
        for k in sorted(self.d):
            if k >= start:
                yield k, self.d[k]


def apply(view: DictView, cmd: object, index: int) -> object:
    # Through the wire, as the log carries it.
    return state_machine.apply_command(view, commands.decode(commands.encode(cmd)), index)


def test_a_retried_write_is_answered_with_its_first_result_and_applied_once() -> None:
    v = DictView()
    reg = apply(v, commands.RegisterSession(30), 10)
    assert reg == sessions.SessionRegistered(10, 30)
    first = apply(v, commands.SessionWrite(10, 1, Put(b"k", b"a", prev_kv=True)), 11)
    again = apply(v, commands.SessionWrite(10, 1, Put(b"k", b"a", prev_kv=True)), 12)
    assert again == first and first.revision == 11
    assert state_machine.get(v, b"k").version == 1
    txn = Txn((), (Put(b"k", b"b"), Range(b"k")), ())
    t1 = apply(v, commands.SessionWrite(10, 2, txn), 13)
    assert apply(v, commands.SessionWrite(10, 2, txn), 14) == t1
    assert state_machine.get(v, b"k").version == 2
    assert isinstance(apply(v, commands.SessionWrite(99, 1, Put(b"k", b"x")), 15), SessionUnknown)


def test_results_kept_are_bounded_per_session() -> None:
    v = DictView()
    apply(v, commands.RegisterSession(30), 1)
    for seq in range(1, sessions.WINDOW + 6):
        apply(v, commands.SessionWrite(1, seq, Put(b"k", b"v")), 1 + seq)
    rec = sessions.get_record(v, 1)
    assert rec is not None and len(rec.results) == sessions.WINDOW
    assert isinstance(apply(v, commands.SessionWrite(1, 2, Put(b"k", b"v")), 100), ResultNotKept)
    assert state_machine.get(v, b"k").version == sessions.WINDOW + 5  # nothing applied twice


def test_expiry_only_of_a_session_idle_since_the_index_named() -> None:
    v = DictView()
    apply(v, commands.RegisterSession(5), 1)
    apply(v, commands.SessionWrite(1, 1, Delete(b"k")), 2)
    assert apply(v, commands.ExpireSession(1, 1), 3) is False  # it was active at 2 since
    assert apply(v, commands.KeepAliveSession(1), 4) is True
    assert apply(v, commands.ExpireSession(1, 4), 5) is True
    assert sessions.get_record(v, 1) is None
    assert isinstance(apply(v, commands.SessionWrite(1, 2, Delete(b"k")), 6), SessionUnknown)


def test_session_records_never_show_in_ranges_nor_fall_to_range_deletes() -> None:
    v = DictView()
    apply(v, commands.RegisterSession(5), 1)
    apply(v, Put(b"a", b"1"), 2)
    everything = state_machine.range_read(v, Range(b"\0", b"\0"))
    assert [kv.key for kv in everything.kvs] == [b"a"] and everything.count == 1
    apply(v, Delete(b"\0", b"\0"), 3)
    assert sessions.get_record(v, 1) is not None and len(sessions.records(v)) == 1


def test_on_lmdb_sessions_make_no_change_events_and_survive_a_restart(tmp_path: Path) -> None:
    """A watcher of the whole keyspace sees the numbered write's key, never the session's own record."""
    from raftkv.core import ConfState, Entry, EntryType, HardState
    from raftkv.storage import LmdbNodeStore, cluster_id_for

    cid = cluster_id_for({1: "a:1"})
    s = LmdbNodeStore(tmp_path, 1, cid, map_size=64 << 20)
    s.bootstrap(ConfState(frozenset({1})), {})
    first = s.last_index() + 1
    cmds = [commands.RegisterSession(30), commands.SessionWrite(first, 1, Put(b"k", b"v")),
            commands.SessionWrite(first, 1, Put(b"k", b"v"))]
    es = [Entry(1, first + i, EntryType.NORMAL, commands.encode(c)) for i, c in enumerate(cmds)]
    s.persist(HardState(1, 1, es[-1].index), es, None, None)
    out = s.apply(es, None)
    s.flush()
    assert out[2] == out[1]  # the retry answered from the kept result
    assert [(e.revision, e.kv.key) for e in s.history_events(first, 10**9)] == [(first + 1, b"k")]
    s.close()
    s = LmdbNodeStore(tmp_path, 1, cid, map_size=64 << 20)
    assert [sid for sid, _ in s.session_records()] == [first]
    assert s.get(b"k").version == 1
    s.close()
