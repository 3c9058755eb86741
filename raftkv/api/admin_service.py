"""The Admin service: status, membership, leadership transfer, snapshots, replication lag."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

import grpc

from ..core import ConfChange, ConfChangeType, StateRole
from ..layers.admission import Admission
from ..layers.lag import FollowerLag
from ..proto.stubs import kv_pb2 as pb
from ..proto.stubs import kv_pb2_grpc, overload_pb2
from ..server.config import address_problem
from ..server.host import NodeHost
from ..server.members import MemberInfo
from .errors import RequestError, invalid, rpc
from .forward import Forwarder


def lag_to_pb(lg: FollowerLag) -> pb.FollowerLag:
    return pb.FollowerLag(id=lg.id, match=lg.match, next=lg.next, applied=lg.applied, state=lg.state,
                          learner=lg.is_learner, lag_entries=lg.lag_entries, lag_bytes=lg.lag_bytes,
                          flush_lag_seconds=lg.flush_lag_seconds, replay_lag_seconds=lg.replay_lag_seconds,
                          last_contact_seconds=-1.0 if lg.last_contact_seconds is None else lg.last_contact_seconds,
                          critical=lg.critical, unreachable=lg.unreachable)


class StoreFacts(Protocol):
    """What Status reports of the node's store (LmdbNodeStore has them): its identity and size."""

    cluster_id: bytes
    incarnation: bytes

    def db_size(self) -> int: ...

    def snapshot_index(self) -> int: ...


def pressure_fields(host: NodeHost) -> dict[str, Any]:
    """Status's admission-control fields: the pressure level and each resource's usage (freshly read)."""
    adm = Admission.of(host)
    level = adm.evaluate()
    return {"pressure": level.name,
            "overload": [overload_pb2.ResourceUsage(resource=name, usage=max(0, wm.last), high_watermark=wm.high,
                                       overloaded=wm.over, budget=wm.budget) for name, wm in adm.marks.items()]}


class AdminService(kv_pb2_grpc.AdminServicer):
    def __init__(self, host: NodeHost, store: StoreFacts, forwarder: Forwarder) -> None:
        self.host = host
        self.store = store
        self.fwd = forwarder

    def _members(self) -> list[pb.Member]:
        conf = self.host.node.conf
        info = self.host.member_info()
        out = []
        for nid in sorted(conf.members()):
            m = info.get(nid, MemberInfo())
            out.append(pb.Member(id=nid, address=m.address, learner=nid in conf.learners, sync=m.sync,
                                 semi_sync=m.semi_sync, incarnation=m.incarnation,
                                 spare=m.spare and nid in conf.learners, replaces=m.replaces,
                                 witness=nid in conf.witnesses, peer_address=m.peer_address))
        return out

    @rpc
    async def Status(self, request: pb.StatusRequest, context: grpc.aio.ServicerContext) -> pb.StatusResponse:
        h = self.host
        st = h.node.status()
        # A node whose persist waits for space steps nothing: it may still think itself leader while its
        # peers elected another. It claims no role and no leader then (see NodeHost.stalled).
        role = "stalled" if h.stalled else st.role.name.lower().replace("_", "-")
        leader = 0 if h.stalled else st.leader
        return pb.StatusResponse(
            id=h.cfg.id, address=h.cfg.address, role=role, term=st.term,
            leader_id=leader, leader_address=h.leader_address() if leader else "", commit=st.commit,
            applied=h.applied,
            alarms=([h.nospace_message()] if h.nospace else []) + (h.corruption.lines() if h.corruption else []),
            last_index=st.last_index, members=self._members(), db_size_bytes=self.store.db_size(),
            followers=[lag_to_pb(lg) for lg in h.follower_lags()], cluster_id=self.store.cluster_id,
            snapshot_index=self.store.snapshot_index(), leader_changes=h.leader_changes,
            identity_problem=h.identity.problem if h.identity is not None else "",
            incarnation=self.store.incarnation, **pressure_fields(h))

    @rpc
    async def MemberList(self, request: pb.MemberListRequest, context: grpc.aio.ServicerContext
                         ) -> pb.MemberListResponse:
        # The leader's view is the authoritative one: a removed follower may never hear of its removal.
        if not self.host.is_leader:
            return await self.fwd.call("Admin", "MemberList", request, context)
        return pb.MemberListResponse(members=self._members(), leader_id=self.host.leader_id)

    async def _change(self, method: str, request: object, context: grpc.aio.ServicerContext,
                      cc: ConfChange) -> pb.MemberResponse:
        if not self.host.is_leader:
            return await self.fwd.call("Admin", method, request, context)
        index, _ = await self.host.change_member(cc)
        return pb.MemberResponse(members=self._members(), index=index)

    @rpc
    async def MemberAdd(self, request: pb.MemberAddRequest, context: grpc.aio.ServicerContext) -> pb.MemberResponse:
        if request.id <= 0:
            raise invalid("member id must be >= 1")
        problem = address_problem(request.address)
        if problem is not None:
            raise invalid(f"member address {problem}")
        kind = ConfChangeType.ADD_LEARNER if request.learner else ConfChangeType.ADD_VOTER
        if request.witness:
            if request.learner or request.spare or request.sync or request.semi_sync:
                raise invalid("a witness is a voter that holds no data: --witness goes without --learner, "
                              "--spare, --sync and --semi-sync")
            kind = ConfChangeType.ADD_WITNESS
        if request.spare and not request.learner:
            raise invalid("a spare is a learner: add it with --learner --spare")
        if request.peer_address and (problem := address_problem(request.peer_address)) is not None:
            raise invalid(f"member peer address {problem}")
        ctx = MemberInfo(request.address, request.sync, request.semi_sync, spare=request.spare,
                         peer_address=request.peer_address).encode()
        return await self._change("MemberAdd", request, context, ConfChange(kind, request.id, ctx))

    @rpc
    async def MemberRemove(self, request: pb.MemberRemoveRequest, context: grpc.aio.ServicerContext
                           ) -> pb.MemberResponse:
        return await self._change("MemberRemove", request, context,
                                  ConfChange(ConfChangeType.REMOVE_NODE, request.id))

    @rpc
    async def MemberPromote(self, request: pb.MemberPromoteRequest, context: grpc.aio.ServicerContext
                            ) -> pb.MemberResponse:
        return await self._change("MemberPromote", request, context,
                                  ConfChange(ConfChangeType.PROMOTE_LEARNER, request.id, self._context(request.id)))

    @rpc
    async def MemberUpdate(self, request: pb.MemberUpdateRequest, context: grpc.aio.ServicerContext
                           ) -> pb.MemberResponse:
        old = self.host.member_info().get(request.id)
        if old is None:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"node {request.id} is not a member", "NOT_A_MEMBER")
        if request.address and (problem := address_problem(request.address)) is not None:
            raise invalid(f"member address {problem}")
        spare = request.spare if request.HasField("spare") else old.spare
        if spare and not old.spare and request.id not in self.host.node.conf.learners:
            raise invalid(f"node {request.id} is a voter: only a learner can be a spare")
        peer_address = request.peer_address if request.HasField("peer_address") else old.peer_address
        if peer_address and (problem := address_problem(peer_address)) is not None:
            raise invalid(f"member peer address {problem}")
        ctx = MemberInfo(request.address or old.address, request.sync, request.semi_sync, old.name,
                         spare=spare, replaces=old.replaces, peer_address=peer_address).encode()
        return await self._change("MemberUpdate", request, context,
                                  ConfChange(ConfChangeType.UPDATE_NODE, request.id, ctx))

    def _context(self, nid: int) -> bytes:
        info = self.host.member_info().get(nid)
        return info.encode() if info else b""

    @rpc
    async def TransferLeader(self, request: pb.TransferLeaderRequest, context: grpc.aio.ServicerContext
                             ) -> pb.TransferLeaderResponse:
        h = self.host
        if not h.is_leader:
            return await self.fwd.call("Admin", "TransferLeader", request, context)
        if request.target_id == h.cfg.id:
            return pb.TransferLeaderResponse(leader_id=h.cfg.id)
        await h.transfer_leader(request.target_id)
        deadline = time.monotonic() + min(context.time_remaining() or 5.0, 5.0)
        while time.monotonic() < deadline:
            if h.leader_id == request.target_id and h.node.role != StateRole.LEADER:
                return pb.TransferLeaderResponse(leader_id=request.target_id)
            await asyncio.sleep(h.cfg.tick_ms / 1000)
        raise RequestError(grpc.StatusCode.UNAVAILABLE,
                           f"leadership did not move to node {request.target_id} in time (is it caught up and reachable?)",
                           "TRANSFER_TIMEOUT")

    @rpc
    async def Snapshot(self, request: pb.SnapshotRequest, context: grpc.aio.ServicerContext) -> pb.SnapshotResponse:
        return pb.SnapshotResponse(index=await self.host.snapshot_now())

    @rpc
    async def Lag(self, request: pb.LagRequest, context: grpc.aio.ServicerContext) -> pb.LagResponse:
        h = self.host
        if not h.is_leader:
            return await self.fwd.call("Admin", "Lag", request, context)
        st = h.node.status()
        return pb.LagResponse(leader_id=h.cfg.id, commit=st.commit, last_index=st.last_index,
                              followers=[lag_to_pb(lg) for lg in h.follower_lags()])
