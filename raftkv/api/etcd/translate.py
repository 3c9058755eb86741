"""etcd's KV requests as raftkv commands, and raftkv's results as etcd's responses.

Validation order and messages follow etcd's (`checkPutRequest`, `checkTxnRequest`, ...): an empty key is
"key is not provided", a lease that does not exist "requested lease not found", a Txn over
--max-txn-ops is "too many operations", a key written twice in one branch is "duplicate key". Limits that
etcd lacks (per-key and per-value size) answer raftkv's INVALID_ARGUMENT message.

Nested transactions (`request_txn`) are raftkv Txns inside a Txn, applied as etcd applies them. etcd
features that need a state-machine change raftkv does not have yet are refused with a clear message,
never served approximately: compares over a key range (`range_end` on a Compare)."""

from __future__ import annotations

import grpc

from ...proto.etcd_stubs import kv_pb2 as mvccpb
from ...proto.etcd_stubs import rpc_pb2 as epb
from ...proto.stubs import kv_pb2 as pb
from ...storage.commands import (
    KV,
    Compare,
    Delete,
    DeleteResult,
    Put,
    PutResult,
    Range,
    RangeResult,
    Txn,
    TxnResult,
)
from ..convert import Validator
from . import errors as E
from .errors import EtcdError

_TARGET = {epb.Compare.VALUE: "value", epb.Compare.VERSION: "version", epb.Compare.CREATE: "create",
           epb.Compare.MOD: "mod"}
_RESULT = {epb.Compare.EQUAL: "=", epb.Compare.NOT_EQUAL: "!=", epb.Compare.LESS: "<", epb.Compare.GREATER: ">"}


def unimplemented(message: str) -> EtcdError:
    return EtcdError(grpc.StatusCode.UNIMPLEMENTED, message)


def needs_filtering(r: epb.RangeRequest) -> bool:
    """Whether the answer is sorted or filtered after the scan (then the scan is not cut at r.limit)."""
    return bool(r.sort_order != epb.RangeRequest.NONE or r.sort_target != epb.RangeRequest.KEY
                or r.min_mod_revision or r.max_mod_revision or r.min_create_revision or r.max_create_revision)


class Translator:
    def __init__(self, v: Validator) -> None:
        self.v = v

    # -- requests ----------------------------------------------------------------------------------
    def range(self, r: epb.RangeRequest) -> Range:
        if not r.key:
            raise E.EMPTY_KEY()
        if r.limit < 0:
            raise EtcdError(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: limit must be >= 0")
        limit = 0 if needs_filtering(r) else r.limit
        # count_only with filters: the count is of the whole range (as etcd's), so no keys are needed
        op = self.v.range(pb.RangeRequest(key=r.key, range_end=r.range_end, limit=limit, keys_only=r.keys_only,
                                          count_only=r.count_only))
        return op

    def put(self, r: epb.PutRequest) -> Put:
        if not r.key:
            raise E.EMPTY_KEY()
        if r.ignore_value and r.value:
            raise E.VALUE_PROVIDED()
        if r.ignore_lease and r.lease:
            raise E.LEASE_PROVIDED()
        if r.lease < 0:
            raise E.LEASE_NOT_FOUND()
        # a lease that does not exist fails when applied (LeaseNotFound: etcd's "requested lease not found")
        return Put(self.v.key(r.key), self.v.value(r.value), r.prev_kv, lease=r.lease)

    def delete(self, r: epb.DeleteRangeRequest) -> Delete:
        if not r.key:
            raise E.EMPTY_KEY()
        return Delete(self.v.key(r.key), self.v.range_end(r.range_end), r.prev_kv)

    def txn(self, r: epb.TxnRequest, nested: bool = False) -> Txn:
        ops = max(len(r.success), len(r.failure), len(r.compare))
        if ops > self.v.cfg.max_txn_ops or len(r.success) + len(r.failure) + len(r.compare) > self.v.cfg.max_txn_ops:
            raise E.TOO_MANY_OPS()
        compares: list[Compare] = []
        for c in r.compare:
            compares += self._compare(c)
        success = tuple(self._op(o) for o in r.success)
        failure = tuple(self._op(o) for o in r.failure)
        if not nested:
            for branch in (success, failure):
                _branch_puts(branch)
        return Txn(tuple(compares), success, failure)

    def _compare(self, c: epb.Compare) -> list[Compare]:
        """etcd's compare as raftkv compares (a conjunction, as etcd's list is)."""
        if not c.key:
            raise E.EMPTY_KEY()
        if c.range_end:
            raise unimplemented("raftkv does not support compares over a key range (Compare.range_end) yet")
        result = _RESULT.get(c.result)
        if result is None:
            raise EtcdError(grpc.StatusCode.INVALID_ARGUMENT, f"etcdserver: unknown compare result {c.result}")
        key = self.v.key(c.key, "compare key")
        if c.target == epb.Compare.LEASE:
            return [Compare(key, "lease", result, c.lease)]
        target = _TARGET.get(c.target)
        if target is None:
            raise EtcdError(grpc.StatusCode.INVALID_ARGUMENT, f"etcdserver: unknown compare target {c.target}")
        if target == "value":
            if result == "!=":
                # etcd: any value compare on a missing key is false; raftkv's "!=" would be true.
                return [Compare(key, "exists", "=", True), Compare(key, "value", "!=", c.value)]
            return [Compare(key, "value", result, c.value)]
        number = {"version": c.version, "create": c.create_revision, "mod": c.mod_revision}[target]
        return [Compare(key, target, result, number)]

    def _op(self, o: epb.RequestOp) -> Put | Delete | Range | Txn:
        kind = o.WhichOneof("request")
        if kind == "request_put":
            if o.request_put.ignore_value or o.request_put.ignore_lease:
                raise unimplemented("raftkv does not support ignore_value / ignore_lease inside a transaction")
            return self.put(o.request_put)
        if kind == "request_delete_range":
            return self.delete(o.request_delete_range)
        if kind == "request_range":
            if o.request_range.revision:
                raise unimplemented("raftkv does not support a revision on a range inside a transaction")
            return self.range(o.request_range)
        if kind == "request_txn":
            return self.txn(o.request_txn, nested=True)
        raise EtcdError(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: a transaction operation must be set")


def _overlaps(key: bytes, d: Delete) -> bool:
    if not d.range_end:
        return key == d.key
    if d.range_end == b"\0":
        return key >= d.key
    return d.key <= key < d.range_end


def _branch_puts(ops: tuple[Put | Delete | Range | Txn, ...]) -> set[bytes]:
    """The keys a branch may put, refusing (as etcd) a branch that puts one key twice, or puts a key
    that a delete of the branch covers; a nested transaction's branches count as the branch's own
    (each alone: only one of them runs)."""
    puts: set[bytes] = set()
    for op in ops:
        if isinstance(op, Put):
            if op.key in puts:
                raise E.DUPLICATE_KEY()
            puts.add(op.key)
    for op in ops:
        if isinstance(op, Txn):
            inner = _branch_puts(op.success) | _branch_puts(op.failure)
            if inner & puts:
                raise E.DUPLICATE_KEY()
            puts |= inner
    for op in ops:
        if isinstance(op, Delete) and any(_overlaps(k, op) for k in puts):
            raise E.DUPLICATE_KEY()
    return puts


# -- results -----------------------------------------------------------------------------------------
def kv_to_etcd(kv: KV) -> mvccpb.KeyValue:
    return mvccpb.KeyValue(key=kv.key, value=kv.value, create_revision=kv.create_revision,
                           mod_revision=kv.mod_revision, version=kv.version, lease=kv.lease)


_SORT_KEY = {
    epb.RangeRequest.KEY: lambda kv: kv.key,
    epb.RangeRequest.VERSION: lambda kv: kv.version,
    epb.RangeRequest.CREATE: lambda kv: kv.create_revision,
    epb.RangeRequest.MOD: lambda kv: kv.mod_revision,
    epb.RangeRequest.VALUE: lambda kv: kv.value,
}


def range_to_etcd(r: epb.RangeRequest, res: RangeResult) -> epb.RangeResponse:
    """etcd's answer from raftkv's scan: revision filters, then sort, then the limit (as etcd's
    `rangeKeys`); `count` counts the whole range, unaffected by filters and limit."""
    kvs = res.kvs
    more = res.more
    if needs_filtering(r):
        kvs = [kv for kv in kvs
               if (not r.min_mod_revision or kv.mod_revision >= r.min_mod_revision)
               and (not r.max_mod_revision or kv.mod_revision <= r.max_mod_revision)
               and (not r.min_create_revision or kv.create_revision >= r.min_create_revision)
               and (not r.max_create_revision or kv.create_revision <= r.max_create_revision)]
        order = r.sort_order
        if order == epb.RangeRequest.NONE and r.sort_target != epb.RangeRequest.KEY:
            order = epb.RangeRequest.ASCEND  # etcd sorts ascending when only a target is given
        if order != epb.RangeRequest.NONE:
            kvs = sorted(kvs, key=_SORT_KEY[r.sort_target], reverse=order == epb.RangeRequest.DESCEND)
        if r.limit and len(kvs) > r.limit:
            kvs = kvs[: r.limit]
            more = True
    return epb.RangeResponse(kvs=[kv_to_etcd(kv) for kv in kvs], more=more, count=res.count)


def put_to_etcd(res: PutResult | None) -> epb.PutResponse:
    out = epb.PutResponse()
    if res is not None and res.prev is not None:
        out.prev_kv.CopyFrom(kv_to_etcd(res.prev))
    return out


def delete_to_etcd(res: DeleteResult | None) -> epb.DeleteRangeResponse:
    if res is None:
        return epb.DeleteRangeResponse()
    return epb.DeleteRangeResponse(deleted=res.deleted, prev_kvs=[kv_to_etcd(kv) for kv in res.prev])


def txn_to_etcd(req: epb.TxnRequest, res: TxnResult, header: epb.ResponseHeader) -> epb.TxnResponse:
    """The responses of the branch taken; each carries a header with the revision alone, as etcd's."""
    ops = req.success if res.succeeded else req.failure
    out = epb.TxnResponse(header=header, succeeded=res.succeeded)
    inner = epb.ResponseHeader(revision=header.revision)
    for op, r in zip(ops, res.results, strict=True):
        if isinstance(r, PutResult):
            resp = epb.ResponseOp(response_put=put_to_etcd(r))
            resp.response_put.header.CopyFrom(inner)
        elif isinstance(r, DeleteResult):
            resp = epb.ResponseOp(response_delete_range=delete_to_etcd(r))
            resp.response_delete_range.header.CopyFrom(inner)
        elif isinstance(r, TxnResult):
            resp = epb.ResponseOp(response_txn=txn_to_etcd(op.request_txn, r, inner))
        else:
            resp = epb.ResponseOp(response_range=range_to_etcd(op.request_range, r))
            resp.response_range.header.CopyFrom(inner)
        out.responses.append(resp)
    return out
