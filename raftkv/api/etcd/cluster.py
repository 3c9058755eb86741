"""etcdserverpb.Cluster on raftkv: MemberList, MemberAdd (with is_learner), MemberRemove, MemberUpdate,
MemberPromote, through the host's membership operations (the same safety checks as `kv members`).

A raftkv member has one address, for peers and clients alike: it is both its peerURL and its clientURL
(http://, or https:// when the node serves TLS). etcd picks a new member's ID itself; so does raftkv here
(one more than the largest ID in the cluster): start the new node with `raftkv serve --id ID --join`."""

from __future__ import annotations

from urllib.parse import urlsplit

import grpc

from ...core import ConfChange, ConfChangeType
from ...proto.etcd_stubs import rpc_pb2 as epb
from ...proto.etcd_stubs import rpc_pb2_grpc as epb_grpc
from ...server.config import address_problem
from ...server.members import MemberInfo
from . import errors as E
from .base import EtcdBase
from .errors import EtcdError, etcd_rpc


def _invalid(message: str) -> EtcdError:
    return EtcdError(grpc.StatusCode.INVALID_ARGUMENT, message)


def address_of(urls: list[str]) -> str:
    """host:port from etcd's peer URLs (raftkv takes exactly one)."""
    if len(urls) != 1:
        raise _invalid(f"raftkv members have exactly one address; got {len(urls)} peer URLs")
    u = urls[0].strip()
    parts = urlsplit(u if "://" in u else f"http://{u}")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None or parts.path not in ("", "/"):
        raise _invalid(f"etcdserver: peer URL {u!r} is not of the form http://HOST:PORT")
    address = parts.netloc
    problem = address_problem(address)
    if problem is not None:
        raise _invalid(f"member address {problem}")
    return address


class EtcdCluster(EtcdBase, epb_grpc.ClusterServicer):
    def _url(self, address: str) -> str:
        return f"{'https' if self.host.cfg.server_tls is not None else 'http'}://{address}" if address else ""

    def _members(self) -> list[epb.Member]:
        conf = self.host.node.conf
        info = self.host.member_info()
        out = []
        for nid in sorted(conf.members()):
            m = info.get(nid, MemberInfo())
            url = self._url(m.address)
            # Until a member has joined (its data directory's incarnation recorded), etcd's way applies:
            # no name and no client URL, which etcdctl shows as "unstarted".
            started = bool(m.incarnation)
            out.append(epb.Member(ID=nid, name=(m.name or f"raftkv-{nid}") if started else "",
                                  peerURLs=[url] if url else [], clientURLs=[url] if url and started else [],
                                  isLearner=nid in conf.learners))
        return out


    @etcd_rpc
    async def MemberList(self, request: epb.MemberListRequest, context: grpc.aio.ServicerContext
                         ) -> epb.MemberListResponse:
        # The leader's view is the authoritative one: a removed follower may never hear of its removal.
        if not self.host.is_leader:
            return await self.forward("Cluster", "MemberList", request, context)
        return epb.MemberListResponse(header=self.header(0), members=self._members())

    @etcd_rpc
    async def MemberAdd(self, request: epb.MemberAddRequest, context: grpc.aio.ServicerContext
                        ) -> epb.MemberAddResponse:
        address = address_of(list(request.peerURLs))
        if not self.host.is_leader:
            return await self.forward("Cluster", "MemberAdd", request, context)
        taken = set(self.host.node.conf.members()) | set(self.host.member_info())
        if any(m.address.lower() == address.lower() for m in self.host.member_info().values()):
            raise E.PEER_URL_EXIST()
        nid = max(taken, default=0) + 1
        kind = ConfChangeType.ADD_LEARNER if request.isLearner else ConfChangeType.ADD_VOTER
        await self.host.change_member(ConfChange(kind, nid, MemberInfo(address).encode()))
        url = self._url(address)
        added = epb.Member(ID=nid, peerURLs=[url], isLearner=request.isLearner)
        return epb.MemberAddResponse(header=self.header(0), member=added, members=self._members())

    def _known(self, nid: int) -> None:
        if nid not in self.host.node.conf.members():
            raise E.MEMBER_NOT_FOUND()

    @etcd_rpc
    async def MemberRemove(self, request: epb.MemberRemoveRequest, context: grpc.aio.ServicerContext
                           ) -> epb.MemberRemoveResponse:
        if not self.host.is_leader:
            return await self.forward("Cluster", "MemberRemove", request, context)
        self._known(request.ID)
        await self.host.change_member(ConfChange(ConfChangeType.REMOVE_NODE, request.ID))
        return epb.MemberRemoveResponse(header=self.header(0), members=self._members())

    @etcd_rpc
    async def MemberUpdate(self, request: epb.MemberUpdateRequest, context: grpc.aio.ServicerContext
                           ) -> epb.MemberUpdateResponse:
        address = address_of(list(request.peerURLs))
        if not self.host.is_leader:
            return await self.forward("Cluster", "MemberUpdate", request, context)
        self._known(request.ID)
        old = self.host.member_info().get(request.ID, MemberInfo())
        ctx = MemberInfo(address, old.sync, old.semi_sync, old.name, spare=old.spare, replaces=old.replaces,
                         peer_address=old.peer_address).encode()
        await self.host.change_member(ConfChange(ConfChangeType.UPDATE_NODE, request.ID, ctx))
        return epb.MemberUpdateResponse(header=self.header(0), members=self._members())

    @etcd_rpc
    async def MemberPromote(self, request: epb.MemberPromoteRequest, context: grpc.aio.ServicerContext
                            ) -> epb.MemberPromoteResponse:
        if not self.host.is_leader:
            return await self.forward("Cluster", "MemberPromote", request, context)
        self._known(request.ID)
        if request.ID not in self.host.node.conf.learners:
            raise E.NOT_LEARNER()
        info = self.host.member_info().get(request.ID)
        await self.host.change_member(ConfChange(ConfChangeType.PROMOTE_LEARNER, request.ID,
                                                 info.encode() if info else b""))
        return epb.MemberPromoteResponse(header=self.header(0), members=self._members())
