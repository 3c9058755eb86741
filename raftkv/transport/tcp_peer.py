"""Raft batches over raw TCP on a peer port of their own (`raftkv serve --peer-listen`), beside gRPC.

A frame is a 4-byte big-endian length and that many bytes of one encoded `MessageBatch`: the very batch a
gRPC peer stream carries, built by the same code (`transport._Peer._batches`) and admitted by the same
checks (`_RaftService.accept`: the connection's certificate through `PeerAuth`, then every batch through
`_check` and the host's `PeerGate`). Only the framing differs, and it costs a third of a gRPC-python
stream's round trip (benchmarks/README.md, "Raft batches over TCP frames").

The sender side is `TcpPeer`, a `_Peer` that writes its batches to one connection instead of a gRPC
stream: same bounded queue (a full queue drops and reports the peer unreachable), same batching, same
back-off on a broken connection. The receiver never answers a batch; it writes back one frame only to
refuse a connection, `CODE\\nreason` (a gRPC status name and the reason), and then closes it, so the
sender logs the refusal once and tells its gate exactly as for a refused gRPC stream. A length prefix over
the port's limit is refused before a byte of its frame is read.

Snapshots still stream over gRPC (snapshot_stream.py): they are rare and large, and gRPC's flow control
and InstallSnapshot protocol already suit them.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct

import grpc
import structlog
from google.protobuf.message import DecodeError

from ..proto.stubs import raft_pb2 as pb
from ..tls import PeerIdentity, PeerRefusal, auth_of_ssl
from .transport import CONNECT_TIMEOUT, Transport, _Peer, _RaftService

log = structlog.get_logger("raftkv.transport")

HEADER = struct.Struct(">I")
HEALTHY_SECONDS = 1.0
"""A connection that lasted this long without a refusal worked: its break starts the back-off over (a port
that accepts and then drops or refuses every connection keeps the sender backing off)."""
USER_TIMEOUT_MS = 10_000
"""Linux TCP_USER_TIMEOUT: a connection whose sent data stays unacknowledged this long is dropped, so a
sender to a partitioned peer reconnects (as gRPC's 10 s keepalive would tell) instead of waiting out
TCP's retransmissions for minutes."""


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _tune(writer: asyncio.StreamWriter) -> None:
    """No Nagle delay (asyncio sets TCP_NODELAY already; said again for clarity), keepalive probes, and a
    bound on unacknowledged data."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for opt, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 2),
                           ("TCP_USER_TIMEOUT", USER_TIMEOUT_MS)):
            if hasattr(socket, opt):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
    except OSError:
        pass


class TcpPeer(_Peer):
    """A peer reached over TCP frames on its peer port (`peer_address`); `address` (its gRPC port) is
    still where snapshots go."""

    def __init__(self, owner: Transport, node_id: int, address: str, peer_address: str) -> None:
        super().__init__(owner, node_id, address)
        self.peer_address = peer_address

    async def run(self) -> None:
        backoff = 0.05
        loop = asyncio.get_running_loop()
        while not self.owner.stopping:
            writer: asyncio.StreamWriter | None = None
            tasks: list[asyncio.Task[object]] = []
            try:
                host, port = split_host_port(self.peer_address)
                ctx = self.owner.client_ssl()
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port, ssl=ctx, server_hostname=host if ctx else None),
                    CONNECT_TIMEOUT)
                _tune(writer)
                opened = loop.time()
                self.connected = True
                sending = asyncio.ensure_future(self._write_all(writer))
                answer = asyncio.ensure_future(reader.read(HEADER.size + 4096))
                tasks = [sending, answer]
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                refused = answer.done() and answer.exception() is None and self._answered(answer.result())
                if not refused and loop.time() - opened >= HEALTHY_SECONDS:
                    backoff = 0.05  # it worked for a while: a fresh break starts the back-off over
                if sending.done():
                    sending.result()  # raises what broke the writes
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - keep the sender alive whatever the connection throws
                log.debug("peer connection error", peer=self.id, address=self.peer_address, error=repr(e))
            finally:
                self.connected = False
                for t in tasks:
                    t.cancel()
                if writer is not None:
                    writer.close()
            if self.owner.stopping:
                return
            backoff = await self.broken(backoff)

    async def _write_all(self, writer: asyncio.StreamWriter) -> None:
        async for batch in self._batches():
            writer.write(frame(batch.SerializeToString()))
            await writer.drain()

    def _answered(self, data: bytes) -> bool:
        """The receiver wrote back a refusal (True), or closed the connection (empty `data`)."""
        if len(data) < HEADER.size:
            return False
        text = data[HEADER.size:HEADER.size + HEADER.unpack_from(data)[0]].decode(errors="replace")
        name, _, reason = text.partition("\n")
        code = grpc.StatusCode.__members__.get(name, grpc.StatusCode.UNKNOWN)
        self.refused(code, reason or name)
        return True


class TcpPeerServer:
    """The peer port: accepts connections, admits each like a gRPC `Send` stream, and feeds its batches to
    the transport's Raft service (`accept`), which checks and delivers them."""

    def __init__(self, transport: Transport, ssl_context: ssl.SSLContext | None, max_frame: int) -> None:
        self.transport = transport
        self.service: _RaftService = transport.service
        self.ssl_context = ssl_context
        self.max_frame = max_frame
        """Largest frame read (the gRPC port's receive limit: peers size their batches under it)."""
        self.server: asyncio.Server | None = None
        self.connections: dict[asyncio.StreamWriter, asyncio.Future[None]] = {}
        """Open connections, each with a future done when its handler has finished."""

    async def start(self, listen: str) -> None:
        """Listen on `listen` (HOST:PORT); OSError if it cannot be bound."""
        host, port = split_host_port(listen)
        self.server = await asyncio.start_server(self._connection, host, port, ssl=self.ssl_context,
                                                 reuse_address=True, limit=1 << 20)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        # Aborted rather than cancelled: each handler then sees its connection end and returns.
        for writer in list(self.connections):
            writer.transport.abort()
        await asyncio.gather(*self.connections.values(), return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.connections[writer] = done
        _tune(writer)
        peer = writer.get_extra_info("peername")
        try:
            await self._serve(reader, writer, f"{peer[0]}:{peer[1]}" if peer else "?")
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass  # the sender went away; it reconnects
        finally:
            self.connections.pop(writer, None)
            done.set_result(None)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        identity: PeerIdentity | None = None
        auth = self.transport.peer_auth
        if auth.enabled:
            checked = auth.check(auth_of_ssl(writer.get_extra_info("ssl_object")))
            if isinstance(checked, PeerRefusal):
                await self._refuse(writer, checked, peer)
                return
            identity = checked
        chunks: list[bytes] = []
        while True:
            (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
            if size > self.max_frame:
                await self._refuse(writer, PeerRefusal(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"a peer frame of {size} bytes is over this node's limit of {self.max_frame}"), peer)
                return
            data = await reader.readexactly(size)
            try:
                batch = pb.MessageBatch.FromString(data)
            except DecodeError:
                await self._refuse(writer, PeerRefusal(grpc.StatusCode.INVALID_ARGUMENT,
                                                       "a peer frame is not a MessageBatch"), peer)
                return
            refusal = self.service.accept(batch, identity, chunks)
            if refusal is not None:
                await self._refuse(writer, refusal, peer)
                return

    async def _refuse(self, writer: asyncio.StreamWriter, refusal: PeerRefusal, peer: str) -> None:
        """Tell the sender why (one frame), log it once, and close the connection."""
        owner = self.transport
        if owner.refusal_log.due(f"in:{refusal.message}"):
            log.warning("refused a Raft stream", code=refusal.code.name, reason=refusal.message, peer=peer,
                        port="peer")
        owner.refused += 1
        try:
            writer.write(frame(f"{refusal.code.name}\n{refusal.message}".encode()))
            await asyncio.wait_for(writer.drain(), 1.0)
        except (TimeoutError, OSError):
            pass
