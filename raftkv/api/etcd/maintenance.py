"""etcdserverpb.Maintenance on raftkv: Status, Alarm (list), MoveLeader, and Defragment as a no-op.

- Status: `version` is the etcd API version raftkv speaks (ETCD_API_VERSION), `dbSize` and
  `dbSizeInUse` the size of the node's LMDB file, `errors` its alarms.
- Alarm GET lists each member's raised alarm (raftkv's NOSPACE, per node, asked of every member); raftkv
  raises and clears NOSPACE itself (it clears once a persist succeeds again), so ACTIVATE and DEACTIVATE
  are refused with FAILED_PRECONDITION saying so.
- Defragment does nothing and says so in trailing metadata (`raftkv-note`): LMDB reuses freed pages.
- Hash, HashKV, Snapshot and Downgrade answer UNIMPLEMENTED naming raftkv's own command."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
import structlog

from ...core import StateRole
from ...proto.etcd_stubs import rpc_pb2 as epb
from ...proto.etcd_stubs import rpc_pb2_grpc as epb_grpc
from ...proto.stubs import kv_pb2 as pb
from ...proto.stubs import kv_pb2_grpc
from ...server.host import NodeHost
from ..admin_service import StoreFacts
from ..forward import Forwarder
from . import errors as E
from .base import EtcdBase
from .errors import EtcdError, etcd_rpc

log = structlog.get_logger("raftkv.api.etcd")
ETCD_API_VERSION = "3.4.0"
"""What Status reports as `version`: the etcd v3 API release whose services raftkv serves (clients
gate features on it)."""
PEER_ALARM_TIMEOUT_S = 1.0
MOVE_LEADER_MAX_S = 10.0
DEFRAG_NOTE = "defragment is a no-op on raftkv: LMDB reuses freed pages in place, there is nothing to compact"


def _unimplemented(message: str) -> EtcdError:
    return EtcdError(grpc.StatusCode.UNIMPLEMENTED, message)


class EtcdMaintenance(EtcdBase, epb_grpc.MaintenanceServicer):
    def __init__(self, host: NodeHost, cluster_id: Callable[[], bytes], forwarder: Forwarder,
                 store: StoreFacts) -> None:
        super().__init__(host, cluster_id, forwarder)
        self.store = store

    @etcd_rpc
    async def Status(self, request: epb.StatusRequest, context: grpc.aio.ServicerContext) -> epb.StatusResponse:
        h = self.host
        st = h.node.status()
        leader = 0 if h.stalled else st.leader
        size = self.store.db_size()
        return epb.StatusResponse(header=self.header(), version=ETCD_API_VERSION, dbSize=size, dbSizeInUse=size,
                                  leader=leader, raftIndex=st.commit, raftTerm=st.term, raftAppliedIndex=h.applied,
                                  errors=[h.nospace_message()] if h.nospace else [],
                                  isLearner=h.cfg.id in h.node.conf.learners)

    async def _peer_alarm(self, nid: int, address: str) -> list[epb.AlarmMember]:
        try:
            stub = kv_pb2_grpc.AdminStub(self.fwd.channel(address))
            st = await stub.Status(pb.StatusRequest(), timeout=PEER_ALARM_TIMEOUT_S)
        except grpc.RpcError as e:
            log.info("alarm list: member did not answer", member=nid, code=e.code().name if hasattr(e, "code") else "")
            return []
        return [epb.AlarmMember(memberID=nid, alarm=epb.NOSPACE)] if st.alarms else []

    @etcd_rpc
    async def Alarm(self, request: epb.AlarmRequest, context: grpc.aio.ServicerContext) -> epb.AlarmResponse:
        if request.action != epb.AlarmRequest.GET:
            raise EtcdError(grpc.StatusCode.FAILED_PRECONDITION,
                            "raftkv raises and clears its alarms itself: NOSPACE clears once the node can persist "
                            "again (free space in its data directory); alarms cannot be activated or disarmed")
        h = self.host
        alarms = [epb.AlarmMember(memberID=h.cfg.id, alarm=epb.NOSPACE)] if h.nospace else []
        peers = [(nid, m.address) for nid, m in sorted(h.member_info().items())
                 if nid != h.cfg.id and m.address and nid in h.node.conf.members()]
        for found in await asyncio.gather(*(self._peer_alarm(nid, a) for nid, a in peers)):
            alarms += found
        if request.memberID:
            alarms = [a for a in alarms if a.memberID == request.memberID]
        if request.alarm != epb.NONE:
            alarms = [a for a in alarms if a.alarm == request.alarm]
        return epb.AlarmResponse(header=self.header(), alarms=sorted(alarms, key=lambda a: a.memberID))

    @etcd_rpc
    async def Defragment(self, request: epb.DefragmentRequest, context: grpc.aio.ServicerContext
                         ) -> epb.DefragmentResponse:
        context.set_trailing_metadata((("raftkv-note", DEFRAG_NOTE),))
        return epb.DefragmentResponse(header=self.header())

    @etcd_rpc
    async def MoveLeader(self, request: epb.MoveLeaderRequest, context: grpc.aio.ServicerContext
                         ) -> epb.MoveLeaderResponse:
        h = self.host
        if not h.is_leader:
            return await self.forward("Maintenance", "MoveLeader", request, context)
        target = request.targetID
        if target not in h.node.conf.voters:
            raise E.BAD_TRANSFEREE()
        if target != h.cfg.id:
            await self._move(target, context)
        return epb.MoveLeaderResponse(header=self.header())

    async def _move(self, target: int, context: grpc.aio.ServicerContext) -> None:
        """Ask for the transfer, again after each election timeout while it has not happened (a voter
        that was a learner a moment ago may not yet know it can campaign), until the call's deadline
        (MOVE_LEADER_MAX_S at most): etcd's "request timed out" then."""
        h = self.host
        budget = min(max((context.time_remaining() or MOVE_LEADER_MAX_S) - 0.5, 0.5), MOVE_LEADER_MAX_S)
        deadline = time.monotonic() + budget
        retry_s = h.cfg.election_ticks * h.cfg.tick_ms / 1000
        while True:
            if h.is_leader:
                await h.transfer_leader(target)
            asked = time.monotonic()
            while time.monotonic() - asked < retry_s:
                if h.leader_id == target and h.node.role != StateRole.LEADER:
                    return
                if time.monotonic() >= deadline:
                    raise E.TIMEOUT()
                await asyncio.sleep(h.cfg.tick_ms / 1000)

    @etcd_rpc
    async def Hash(self, request: epb.HashRequest, context: grpc.aio.ServicerContext) -> epb.HashResponse:
        raise _unimplemented("raftkv does not serve etcd's Hash; compare members' state with `kv check hash`")

    @etcd_rpc
    async def HashKV(self, request: epb.HashKVRequest, context: grpc.aio.ServicerContext) -> epb.HashKVResponse:
        raise _unimplemented("raftkv does not serve etcd's HashKV yet; compare members' state with `kv check hash`")

    @etcd_rpc
    async def Snapshot(self, request: epb.SnapshotRequest, context: grpc.aio.ServicerContext) -> epb.SnapshotResponse:
        raise _unimplemented("raftkv does not stream etcd snapshots yet; back up with `kv snapshot save FILE`")

    @etcd_rpc
    async def Downgrade(self, request: epb.DowngradeRequest, context: grpc.aio.ServicerContext
                        ) -> epb.DowngradeResponse:
        raise _unimplemented("raftkv has no cluster version to downgrade")
