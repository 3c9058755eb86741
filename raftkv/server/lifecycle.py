"""Running one node as a process: open the store, start serving, stop cleanly on SIGTERM / SIGINT."""

from __future__ import annotations

import asyncio
import errno
import signal
import socket
import sys

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .. import exit_codes
from ..api.admin_service import AdminService
from ..api.coordination import Coordination
from ..api.etcd import EtcdServices
from ..api.forward import Forwarder
from ..api.kv_service import KVService
from ..api.maintenance_service import add_to_server as add_maintenance
from ..api.witness_guard import WitnessGuard
from ..proto.stubs import kv_pb2, kv_pb2_grpc, raft_pb2
from ..storage import ForeignDataError, LmdbNodeStore, StorageError, cluster_id_for
from ..storage.errors import is_damage
from ..storage.identity import has_data
from ..tls import TlsError, check_certificate_dates
from ..transport import Transport
from ..transport.snapshot_stream import SNAPSHOT_STREAM_CHUNK
from ..transport.tcp_peer import TcpPeerServer
from ..transport.transport import SNAPSHOT_CHUNK, server_options
from .config import ServerConfig
from .corruption import CorruptionChecker
from .force_new import ForceNewClusterRefused, force_new_cluster
from .grpc_metrics import RequestMetrics
from .host import NodeHost, bootstrap_store
from .http_endpoint import HttpEndpoint
from .identity import IdentityGuard
from .logging_setup import configure_logging
from .metrics import Metrics
from .ports import SystemClock, ThreadIO
from .removal import GRACE_SECONDS, marker_text
from .spares import SparePromoter
from .stall_watch import StallWatch, format_stacks
from .witness_role import RoleMismatch, witness_mismatch

log = structlog.get_logger("raftkv.server")


def run_node(cfg: ServerConfig) -> int:
    """Serve until a signal; returns the process exit code."""
    try:
        configure_logging(cfg.log_format, cfg.log_level, cfg.id)
    except ValueError as e:
        print(f"Error: {e}", file=sys.stderr)
        return exit_codes.USAGE
    # `kill -USR1 PID` writes every thread's Python stack to stderr: what an operator (or the partition
    # suite) needs of a node that is up but does not answer (stall_watch.py says how, and why not
    # faulthandler's handler).
    signal.signal(signal.SIGUSR1, _on_sigusr1)
    removed = marker_text(cfg.data_dir)
    if removed is not None:
        print(f"Error: refusing to start: {removed}", file=sys.stderr)
        return exit_codes.NEEDS_OPERATOR
    refusal = _refuse_before_opening(cfg)
    if refusal is not None:
        code, msg = refusal
        print(f"Error: refusing to start: {msg}", file=sys.stderr)
        return code
    # With a token, founders derive the cluster id and know it from the start; without one, the first
    # leader chooses it (server/identity.py). A joining node learns it from the leader.
    cluster_id = cluster_id_for(cfg.peers, cfg.initial_cluster_token) if cfg.initial_cluster_token else None
    try:
        store = LmdbNodeStore(cfg.data_dir, cfg.id, None if cfg.join else cluster_id, cfg.map_size,
                              founding=None if cfg.join else cluster_id_for(cfg.peers))
        bootstrap_store(store, cfg)
        if cfg.force_new_cluster:
            force_new_cluster(store, cfg.id)
    except ForceNewClusterRefused as e:
        store.close()
        print(f"Error: refusing to start: {e}", file=sys.stderr)
        return exit_codes.USAGE
    except ForeignDataError as e:
        print(f"Error: refusing to start: {e}", file=sys.stderr)
        return exit_codes.NEEDS_OPERATOR
    except StorageError as e:
        print(f"Error: refusing to start: {e}", file=sys.stderr)
        return exit_code_for(e)
    try:
        return asyncio.run(_serve(cfg, store))
    except StorageError as e:
        print(f"Error: stopped: {e}", file=sys.stderr)
        return exit_code_for(e)
    finally:
        store.close()


def exit_code_for(err: BaseException) -> int:
    """Damaged or foreign data needs an operator; a `--witness` flag that disagrees with the role the
    cluster gave this node needs another command line; anything else that stops a node (a failing disk, a
    data directory in use, a host loop that crashed) may go away when it is restarted."""
    if isinstance(err, ForeignDataError) or is_damage(err):
        return exit_codes.NEEDS_OPERATOR
    if isinstance(err, RoleMismatch):
        return exit_codes.USAGE
    return exit_codes.RETRY
def _refuse_before_opening(cfg: ServerConfig) -> tuple[int, str] | None:
    """What stops a node before it touches its data directory: (exit code, one line), or None."""
    if cfg.initial_cluster_state == "existing" and not cfg.join and not has_data(cfg.data_dir):
        return (exit_codes.NEEDS_OPERATOR,
                f"{cfg.data_dir} holds no data and --initial-cluster-state is existing: this member lost its "
                f"data; remove and re-add it (kv members remove {cfg.id}; kv members add {cfg.id} "
                f"{cfg.address} --learner), then start it with --join")
    if cfg.force_new_cluster and not has_data(cfg.data_dir):
        return (exit_codes.USAGE, f"{cfg.data_dir} holds no data: --force-new-cluster keeps a survivor's data, "
                                  "and there is none here")
    warnings = []
    for path in dict.fromkeys(f for f in (cfg.cert_file, cfg.peer_cert_file) if f):
        try:
            warning = check_certificate_dates(path)
        except TlsError as e:
            return exit_codes.USAGE, str(e)
        if warning:
            warnings.append(warning)
    for w in warnings:
        log.warning("certificate expires soon", detail=w)
    return None


def _port_in_use(listen: str) -> bool:
    """Whether another process holds `listen` (checked before gRPC binds, so the refusal is one line)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, ValueError):
        return False  # gRPC reports an address it cannot use
    for family, kind, proto, _, addr in infos[:1]:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(addr)
            except OSError as e:
                return e.errno == errno.EADDRINUSE
    return False


def _add_sessions(server: grpc.aio.Server, host: NodeHost, kv_service: KVService) -> None:
    """Client sessions for exactly-once writes: the Sessions service and the leader's expiry of idle ones."""
    from ..proto.stubs import overload_pb2_grpc
    from .session_expiry import SessionKeeper

    overload_pb2_grpc.add_SessionsServicer_to_server(kv_service.sessions, server)
    SessionKeeper(host)


STALL_DUMP_MIN_S = 2.0
"""The event loop's watchdog dumps the stacks after at least this long without a tick (4 election timeouts
otherwise): long enough that a busy machine's hiccups stay out of the log."""
_watches: list[StallWatch] = []
"""The serving node's stall watch, once it has one: SIGUSR1 asks its watchdog thread for the stacks."""


def _on_sigusr1(signum: int, frame: object) -> None:
    """Runs on the main thread between bytecodes. The watchdog thread writes the stacks, so that the
    handler returns at once; before the node has one (still opening its data), they are written here.
    While the event loop is stuck inside one call, this waits for it; the watchdog writes the stacks of a
    loop stuck that long by itself."""
    if _watches:
        _watches[-1].ask_dump()
    else:
        sys.stderr.write(format_stacks("Stacks of every thread (asked for with SIGUSR1):"))
        sys.stderr.flush()



async def _serve(cfg: ServerConfig, store: LmdbNodeStore) -> int:
    metrics = Metrics(cfg.id)
    guard = IdentityGuard(cfg.id, store, cfg.join)
    try:
        peer_auth = cfg.peer_auth()
        peer_tls = cfg.peer_tls
    except TlsError as e:
        print(f"Error: {e}", file=sys.stderr)
        return exit_codes.USAGE
    # Built apart: the transport fills its inbox, the host pulls from it (transport/inbox.py).
    transport = Transport(cfg.id, cfg.address, guard.header_cluster_id, adopt_cluster_id=guard.adopt_from_leader,
                          tls=peer_tls, gate=guard, peer_auth=peer_auth,
                          snapshot_chunk=min(SNAPSHOT_CHUNK, cfg.peer_batch_bytes), max_batch_bytes=cfg.peer_batch_bytes,
                          snapshot_store=store, snapshot_stream_chunk=min(SNAPSHOT_STREAM_CHUNK, cfg.peer_batch_bytes),
                          queue_bytes_limit=cfg.overload_max_follower_queue_bytes)
    transport.peer_listen = cfg.peer_listen
    host = NodeHost(cfg, store, transport, metrics, clock=SystemClock(), io=ThreadIO(cfg.id), inbox=transport.inbox,
                    identity=guard)
    mismatch = witness_mismatch(cfg.id, cfg.witness, host.node.conf)
    if mismatch is not None:
        print(f"Error: refusing to start: {mismatch}", file=sys.stderr)
        return exit_codes.USAGE
    # A loop that stands still this long gets every thread's stack in the log (stall_watch.py).
    host.stall_watch.start_watchdog(max(STALL_DUMP_MIN_S, 4 * host.stall_watch.warn_after_s))
    _watches.append(host.stall_watch)
    host.corruption = CorruptionChecker(host, cfg.corruption_check_interval)
    spares = SparePromoter(host, cfg.spare_promote_after)
    forwarder = Forwarder(host)
    if _port_in_use(cfg.listen):
        print(f"Error: cannot listen on {cfg.listen}: the address is in use (is another raftkv serve running?)",
              file=sys.stderr)
        return exit_codes.RETRY
    # No SO_REUSEPORT: a second process on the same port would otherwise silently share its traffic.
    server = grpc.aio.server(interceptors=[RequestMetrics(metrics.registry), WitnessGuard(host)],
                             options=[*server_options(cfg.grpc_receive_limit), ("grpc.so_reuseport", 0)])
    transport.events = metrics
    metrics.watch_node(lambda: host.node.term, lambda: host.node.raft_log.committed, lambda: host.applied,
                       lambda: host.node.raft_log.last_index(), store.db_size, store.db_in_use)
    transport.register(server)
    kv_service = KVService(host, lambda: store.cluster_id, forwarder)
    kv_pb2_grpc.add_KVServicer_to_server(kv_service, server)
    kv_pb2_grpc.add_AdminServicer_to_server(AdminService(host, store, forwarder), server)
    _add_sessions(server, host, kv_service)
    coordination = Coordination(host, store, forwarder, kv_service)
    coordination_names = coordination.register(server)
    # etcd's v3 API beside raftkv.v1, sharing the write-ack policy (its semi-sync state) with KV.
    etcd = EtcdServices(host, store, forwarder, kv_service.acks, coordination)
    etcd_names = etcd.register(server)
    maintenance = add_maintenance(server, host, store, forwarder)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (kv_pb2.DESCRIPTOR.services_by_name["KV"].full_name, kv_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
             raft_pb2.DESCRIPTOR.services_by_name["Raft"].full_name, maintenance, health.SERVICE_NAME,
             reflection.SERVICE_NAME, *coordination_names, *etcd_names)
    reflection.enable_server_reflection(names, server)
    try:
        tls = cfg.server_tls
        if tls is not None:
            port = server.add_secure_port(cfg.listen, tls.server_credentials(cfg.requires_client_certs))
        else:
            port = server.add_insecure_port(cfg.listen)
    except TlsError as e:
        print(f"Error: {e}", file=sys.stderr)
        return exit_codes.USAGE
    except RuntimeError as e:
        print(f"Error: cannot listen on {cfg.listen}: {e}", file=sys.stderr)
        return exit_codes.RETRY
    if port == 0:
        print(f"Error: cannot listen on {cfg.listen}", file=sys.stderr)
        return exit_codes.RETRY
    peer_port = await _start_peer_port(cfg, transport)
    if isinstance(peer_port, int):
        return peer_port
    await server.start()
    await host.start()
    host.corruption.start()
    spares.start()
    coordination.start()
    guard.members_changed([])  # a cluster id recorded in the registry but not yet in meta (a crash between)
    if tls is not None and not peer_auth.enabled:
        log.warning("peers are not authenticated: any client that completes TLS may speak Raft to this node",
                    detail="add --peer-client-cert-auth (or --client-cert-auth) so peers present certificates")
    http = None
    if cfg.metrics_listen:
        try:
            http = HttpEndpoint(cfg.metrics_listen, metrics.registry, lambda: _health(host))
        except OSError as e:
            print(f"Error: cannot serve metrics on {cfg.metrics_listen}: {e}", file=sys.stderr)
            await server.stop(0)
            await host.stop()
            return exit_codes.RETRY
        http.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    for name in ("", "liveness"):
        await health_servicer.set(name, serving)
    log.info("serving", listen=cfg.listen, metrics=cfg.metrics_listen or None, cluster_id=store.cluster_id.hex(),
             incarnation=store.incarnation.hex(), peers_authenticated=peer_auth.enabled)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    readiness = asyncio.create_task(_readiness(host, health_servicer, stop))
    failed = asyncio.create_task(_stop_when_failed(host, stop))
    leave = asyncio.create_task(_leave_when_removed(host, stop))
    await stop.wait()
    failed.cancel()
    leave.cancel()
    log.info("shutting down")
    readiness.cancel()
    await host.corruption.stop()
    await spares.stop()
    await coordination.stop()
    await server.stop(grace=1.0)
    kv_service.close()
    etcd.close()
    await host.stop()
    if peer_port is not None:
        await peer_port.stop()
    await transport.stop()
    await forwarder.close()
    if http is not None:
        http.stop()
    log.info("stopped")
    if host.fatal is not None:
        e = host.fatal
        reason = str(e) if isinstance(e, StorageError | RoleMismatch) else \
            f"the host loop cannot go on: {type(e).__name__}: {e}"
        print(f"Error: stopped: {reason}".replace("\n", " "), file=sys.stderr)
        return exit_code_for(e)
    return exit_codes.NEEDS_OPERATOR if host.removal.removed else 0


async def _start_peer_port(cfg: ServerConfig, transport: Transport) -> TcpPeerServer | int | None:
    """The TCP peer port (`--peer-listen`), serving with the gRPC port's certificate, trust and client
    certificate demand; None without one, or the exit code of a port that cannot be served."""
    if not cfg.peer_listen:
        return None
    try:
        tls = cfg.server_tls
        ctx = tls.server_ssl_context(cfg.requires_client_certs) if tls is not None else None
    except TlsError as e:
        print(f"Error: --peer-listen: {e}", file=sys.stderr)
        return exit_codes.USAGE
    if _port_in_use(cfg.peer_listen):
        print(f"Error: cannot listen on {cfg.peer_listen} (--peer-listen): the address is in use", file=sys.stderr)
        return exit_codes.RETRY
    port = TcpPeerServer(transport, ctx, cfg.grpc_receive_limit)
    try:
        await port.start(cfg.peer_listen)
    except OSError as e:
        print(f"Error: cannot listen on {cfg.peer_listen} (--peer-listen): {e.strerror or e}", file=sys.stderr)
        return exit_codes.RETRY
    log.info("peer port", listen=cfg.peer_listen, tls=ctx is not None)
    return port


async def _leave_when_removed(host: NodeHost, stop: asyncio.Event) -> None:
    """A removed member answers (refusing) for a short grace, then the process exits NEEDS_OPERATOR."""
    await host.removal.event.wait()
    await asyncio.sleep(GRACE_SECONDS)
    stop.set()


async def _stop_when_failed(host: NodeHost, stop: asyncio.Event) -> None:
    """A host loop that cannot go on stops the node: the server stops serving and the process exits."""
    await host.failed.wait()
    stop.set()


def _identity_problem(host: NodeHost) -> str:
    return host.identity.problem if host.identity is not None else ""


def _health(host: NodeHost) -> dict[str, object]:
    ready, why = host.readiness()
    out: dict[str, object] = {"id": host.cfg.id, "ready": ready, "not_ready_because": why,
                              "has_leader": bool(host.leader_id), "leader": host.leader_id, "applied": host.applied,
                              "term": host.node.term, "alarms": (["nospace"] if host.nospace else [])
                              + (["corrupt"] if host.corruption is not None and host.corruption.raised else []),
                              "removed": host.removal.removed}
    problem = _identity_problem(host)
    if problem:
        out["identity_problem"] = problem
    return out


async def _readiness(host: NodeHost, servicer: health.aio.HealthServicer, stop: asyncio.Event) -> None:
    """`readiness` is SERVING while this node can serve (`NodeHost.readiness`): its loop runs, it knows a
    leader (it can then serve or forward requests), it is not stopping, no alarm (NOSPACE) holds, and the
    cluster does not refuse it as a member."""
    last = None
    while not stop.is_set():
        status = (health_pb2.HealthCheckResponse.SERVING if host.readiness()[0]
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        if status != last:
            await servicer.set("readiness", status)
            last = status
        await asyncio.sleep(0.2)
