"""etcd requests as raftkv commands, and back: the parts of etcd's semantics that the translation itself
carries (compare rules on missing keys, duplicate keys in a branch, sort and revision filters, the
metadata levels), checked against the real state machine's apply on an in-memory view."""

from __future__ import annotations

import grpc
import pytest

from raftkv.api.convert import Validator
from raftkv.api.errors import RequestError
from raftkv.api.etcd import levels
from raftkv.api.etcd.errors import EtcdError, to_etcd
from raftkv.api.etcd.translate import Translator, range_to_etcd, txn_to_etcd
from raftkv.core import ConfChangeRejected
from raftkv.proto.etcd_stubs import rpc_pb2 as epb
from raftkv.proto.stubs import kv_pb2 as pb
from raftkv.server.config import ServerConfig
from raftkv.server.errors import LeadershipLost, NoSpace, NotLeader, ProposalLost, SyncTimeout
from raftkv.server.lease_keeper import LeaseExpired
from raftkv.storage import commands
from raftkv.storage.commands import KV, RangeResult
from raftkv.storage.errors import LeaseExists, LeaseNotFound
from raftkv.storage.state_machine import apply_command

T = Translator(Validator(ServerConfig()))


class DictView:
    """The state machine's KVView over a dict (what the write-back overlay is to LMDB)."""

    def __init__(self) -> None:
        self.d: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.d.get(key)

    def put(self, key: bytes, body: bytes) -> None:
        self.d[key] = body

    def delete(self, key: bytes) -> None:
        self.d.pop(key, None)

    def scan(self, start: bytes):  # noqa: ANN201
        return iter(sorted((k, v) for k, v in self.d.items() if k >= start))


def _cmp(target: int, result: int, key: bytes, **operand: object) -> epb.Compare:
    return epb.Compare(target=target, result=result, key=key, **operand)


@pytest.mark.parametrize(("compare", "want"), [
    # etcd: every value compare on a missing key is false, "!=" included.
    (_cmp(epb.Compare.VALUE, epb.Compare.NOT_EQUAL, b"missing", value=b"x"), False),
    (_cmp(epb.Compare.VALUE, epb.Compare.EQUAL, b"missing", value=b""), False),
    (_cmp(epb.Compare.VALUE, epb.Compare.NOT_EQUAL, b"k", value=b"x"), True),
    (_cmp(epb.Compare.VERSION, epb.Compare.EQUAL, b"missing", version=0), True),
    (_cmp(epb.Compare.CREATE, epb.Compare.GREATER, b"k", create_revision=0), True),
    (_cmp(epb.Compare.MOD, epb.Compare.LESS, b"k", mod_revision=7), True),
])
def test_compares_follow_etcd(compare: epb.Compare, want: bool) -> None:
    view = DictView()
    apply_command(view, T.put(epb.PutRequest(key=b"k", value=b"v")), 5)
    txn = T.txn(epb.TxnRequest(compare=[compare]))
    assert apply_command(view, txn, 6).succeeded is want


@pytest.mark.parametrize(("compare", "want"), [
    (_cmp(epb.Compare.LEASE, epb.Compare.EQUAL, b"k", lease=7), True),
    (_cmp(epb.Compare.LEASE, epb.Compare.EQUAL, b"k", lease=8), False),
    (_cmp(epb.Compare.LEASE, epb.Compare.GREATER, b"k", lease=0), True),
    (_cmp(epb.Compare.LEASE, epb.Compare.EQUAL, b"plain", lease=0), True),  # a key without a lease: 0
    (_cmp(epb.Compare.LEASE, epb.Compare.EQUAL, b"missing", lease=0), True),  # a missing key: 0, as etcd
    (_cmp(epb.Compare.LEASE, epb.Compare.NOT_EQUAL, b"missing", lease=7), True),
])
def test_lease_compares_follow_etcd(compare: epb.Compare, want: bool) -> None:
    view = DictView()
    apply_command(view, T.put(epb.PutRequest(key=b"k", value=b"v", lease=7)), 5, lambda lease: lease == 7)
    apply_command(view, T.put(epb.PutRequest(key=b"plain", value=b"v")), 6)
    txn = T.txn(epb.TxnRequest(compare=[compare]))
    assert apply_command(view, txn, 7).succeeded is want


@pytest.mark.parametrize("ops", [
    [epb.RequestOp(request_put=epb.PutRequest(key=b"a", value=b"1")),
     epb.RequestOp(request_put=epb.PutRequest(key=b"a", value=b"2"))],
    [epb.RequestOp(request_put=epb.PutRequest(key=b"a/1", value=b"1")),
     epb.RequestOp(request_delete_range=epb.DeleteRangeRequest(key=b"a/", range_end=b"a0"))],
])
def test_a_key_written_twice_in_a_branch_is_refused(ops: list[epb.RequestOp]) -> None:
    with pytest.raises(EtcdError, match="duplicate key given in txn request"):
        T.txn(epb.TxnRequest(success=ops))


def test_refusals_are_etcds() -> None:
    cases = [(lambda: T.put(epb.PutRequest(key=b"k", lease=-7)), grpc.StatusCode.NOT_FOUND,
              "etcdserver: requested lease not found"),
             (lambda: T.put(epb.PutRequest(key=b"", value=b"v")), grpc.StatusCode.INVALID_ARGUMENT,
              "etcdserver: key is not provided"),
             (lambda: T.put(epb.PutRequest(key=b"k", value=b"v", ignore_value=True)),
              grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: value is provided"),
             (lambda: T.txn(epb.TxnRequest(success=[epb.RequestOp(request_put=epb.PutRequest(key=b"k"))] * 129)),
              grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: too many operations in txn request"),
             (lambda: T.txn(epb.TxnRequest(compare=[epb.Compare(key=b"k", range_end=b"l")])),
              grpc.StatusCode.UNIMPLEMENTED, "compares over a key range")]
    for call, code, message in cases:
        with pytest.raises(EtcdError) as e:
            call()
        assert e.value.code == code and message in str(e.value)


def _kv(key: bytes, value: bytes, create: int, mod: int, version: int) -> KV:
    return KV(key, value, create, mod, version)


def test_range_filters_sort_then_limit_and_count_the_whole_range() -> None:
    res = RangeResult([_kv(b"a", b"3", 2, 9, 4), _kv(b"b", b"1", 3, 3, 1), _kv(b"c", b"2", 4, 8, 2)], 3, False)
    req = epb.RangeRequest(key=b"a", range_end=b"d", sort_target=epb.RangeRequest.VALUE,
                           sort_order=epb.RangeRequest.DESCEND, min_mod_revision=4, limit=1)
    out = range_to_etcd(req, res)
    assert [kv.key for kv in out.kvs] == [b"a"] and out.more and out.count == 3
    # A sort target without an order sorts ascending, as etcd does.
    out = range_to_etcd(epb.RangeRequest(key=b"a", range_end=b"d", sort_target=epb.RangeRequest.MOD), res)
    assert [kv.key for kv in out.kvs] == [b"b", b"c", b"a"] and not out.more
    out = range_to_etcd(epb.RangeRequest(key=b"a", range_end=b"d", max_create_revision=3), res)
    assert [kv.key for kv in out.kvs] == [b"a", b"b"]


def test_metadata_levels_parse_into_raftkv_options() -> None:
    w = levels.write_options({"raftkv-ack": "semi_sync;min_replicas=2;timeout_ms=500"})
    assert (w.ack, w.min_replicas, w.timeout_ms) == (pb.ACK_SEMI_SYNC, 2, 500)
    assert levels.write_options({}).ack == pb.ACK_DEFAULT
    r = levels.read_options({"raftkv-consistency": "bounded_staleness;max_staleness_ms=500;max_lag_entries=0;strict"},
                            serializable=False)
    assert (r.consistency, r.max_staleness_ms, r.has_max_lag_entries, r.strict) == (pb.BOUNDED_STALENESS, 500,
                                                                                    True, True)
    assert levels.read_options({}, serializable=True).consistency == pb.SERIALIZABLE
    assert levels.read_options({}, serializable=False).consistency == pb.LINEARIZABLE
    tok = levels.token_text(b"\x00\xfftoken")
    assert levels.read_options({"raftkv-session-token": tok}, False).consistency == pb.SESSION
    for bad in ({"raftkv-ack": "quick"}, {"raftkv-ack": "sync;timeout_ms=-1"}, {"raftkv-ack": "leader;x=1"}):
        with pytest.raises(EtcdError):
            levels.write_options(bad)


def _put_op(key: bytes, value: bytes) -> epb.RequestOp:
    return epb.RequestOp(request_put=epb.PutRequest(key=key, value=value))


def test_nested_txn_compares_see_the_state_before_the_txn() -> None:
    """etcd evaluates every compare on the chosen path before any operation applies: the nested compare
    sees k=v although the outer branch puts k=w first. The command survives the log's encoding."""
    view = DictView()
    apply_command(view, T.put(epb.PutRequest(key=b"k", value=b"v")), 5)
    inner = epb.TxnRequest(compare=[_cmp(epb.Compare.VALUE, epb.Compare.EQUAL, b"k", value=b"v")],
                           success=[_put_op(b"n", b"yes"), epb.RequestOp(request_range=epb.RangeRequest(key=b"k"))],
                           failure=[_put_op(b"n", b"no")])
    req = epb.TxnRequest(success=[_put_op(b"k", b"w"), epb.RequestOp(request_txn=inner)])
    cmd = commands.decode(commands.encode(T.txn(req)))
    res = apply_command(view, cmd, 6)
    out = txn_to_etcd(req, res, epb.ResponseHeader(revision=6))
    nested = out.responses[1].response_txn
    assert out.succeeded and nested.succeeded
    assert [kv.value for kv in nested.responses[1].response_range.kvs] == [b"w"]  # ops apply in order
    assert nested.header.revision == 6
    assert commands.adds_bytes(cmd)


def test_nested_txn_duplicate_keys_are_refused() -> None:
    inner = epb.TxnRequest(success=[_put_op(b"a", b"2")])
    with pytest.raises(EtcdError, match="duplicate key"):
        T.txn(epb.TxnRequest(success=[_put_op(b"a", b"1"), epb.RequestOp(request_txn=inner)]))
    # The nested transaction's two branches never both run: the same key in each is fine.
    both = epb.TxnRequest(success=[_put_op(b"a", b"2")], failure=[_put_op(b"a", b"3")])
    T.txn(epb.TxnRequest(success=[epb.RequestOp(request_txn=both)]))


@pytest.mark.parametrize(("err", "code", "message"), [
    (NotLeader(2, "127.0.0.1:7002"), grpc.StatusCode.UNAVAILABLE, "etcdserver: not leader"),
    (NotLeader(0, ""), grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader"),
    (ProposalLost(7), grpc.StatusCode.UNAVAILABLE, "etcdserver: leader changed"),
    (LeadershipLost("x"), grpc.StatusCode.UNAVAILABLE, "etcdserver: leader changed"),
    (NoSpace("disk full"), grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded"),
    (TimeoutError(), grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out"),
    (RequestError(grpc.StatusCode.INVALID_ARGUMENT, "request is too large: 9 bytes", "REQUEST_TOO_LARGE"),
     grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large"),
    (RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded", "OVERLOADED"),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: too many requests"),
    (ConfChangeRejected("node 4 has not caught up: it is 900 entries behind"), grpc.StatusCode.FAILED_PRECONDITION,
     "etcdserver: can only promote a learner member which is in sync with leader"),
    (ConfChangeRejected("removing node 2 would leave voters 1, 3, of which only 1 are healthy now ... "
                        "they could not commit, and writes would stop"), grpc.StatusCode.FAILED_PRECONDITION,
     "etcdserver: re-configuration failed due to not enough started members"),
    (LeaseNotFound(7), grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found"),
    (LeaseExpired(7), grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found"),
    (LeaseExists(7), grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: lease already exists"),
])
def test_raftkv_failures_become_etcds_errors(err: BaseException, code: grpc.StatusCode, message: str) -> None:
    e = to_etcd(err)
    assert (e.code, str(e)) == (code, message)


def test_a_sync_timeout_keeps_raftkvs_status() -> None:
    """Only raftkv-aware clients ask for `sync`; its timeout says the write IS committed, which no etcd
    error can say."""
    e = to_etcd(SyncTimeout(9, 2, [1]))
    assert e.code == grpc.StatusCode.DEADLINE_EXCEEDED and "committed at index 9" in str(e)


def test_a_put_carries_its_lease() -> None:
    """The lease's existence is checked when the put applies (state_machine: LeaseNotFound)."""
    assert T.put(epb.PutRequest(key=b"k", value=b"v", lease=7)).lease == 7
    with pytest.raises(LeaseNotFound):
        apply_command(DictView(), T.put(epb.PutRequest(key=b"k", value=b"v", lease=7)), 5)
