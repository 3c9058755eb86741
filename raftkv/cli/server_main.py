"""`raftkv serve` runs one node; `raftkv dev` runs a local 3-node cluster in the foreground."""

from __future__ import annotations

import os
import re
import socket
import sys
from dataclasses import fields
from typing import Any

from ..server.logging_setup import quiet_grpc_core_for_serve

quiet_grpc_core_for_serve(sys.argv)  # before anything imports grpc: its core reads GRPC_VERBOSITY at import

import click  # noqa: E402

from .. import exit_codes  # noqa: E402
from ..server.config import PEER_MAPS, ConfigError, ServerConfig, address_problem, parse_peers  # noqa: E402


def _fail(msg: str) -> None:
    """A setting that makes no sense: the operator must change the command line or the config file."""
    click.echo(f"Error: {msg}", err=True)
    sys.exit(exit_codes.USAGE)


class RaftkvGroup(click.Group):
    """`raftkv`: what click itself refuses (an unknown flag, a value of the wrong type, a missing
    argument) is one `Error:` line and exit 64 USAGE, as every other refusal of a command line, not
    click's usage text and exit 2 (which a supervisor would take for a crash)."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help() if e.ctx else "raftkv --help")
            sys.exit(0)
        except click.UsageError as e:
            where = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
            _fail(" ".join(e.format_message().split()) + where)
        except click.ClickException as e:
            _fail(" ".join(e.format_message().split()))
        except (click.exceptions.Abort, KeyboardInterrupt):
            sys.exit(130)


@click.group(cls=RaftkvGroup,
             context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "RAFTKV"})
def main() -> None:
    """raftkv: a Raft-replicated key-value store.

    Every flag of `serve` may also come from the environment as RAFTKV_SERVE_<FLAG> (e.g.
    RAFTKV_SERVE_DATA_DIR); a flag on the command line wins."""


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), envvar="RAFTKV_SERVE_CONFIG", help="TOML file with settings; flags win.")
@click.option("--id", "node_id", type=int, envvar="RAFTKV_SERVE_ID", help="This node's id (>= 1).")
@click.option("--id-from-hostname", is_flag=True, default=None,
              help="Take the id from a StatefulSet hostname: NAME-0 is node 1, NAME-1 node 2, ...")
@click.option("--data-dir", help="Directory for this node's LMDB data.")
@click.option("--listen", help="gRPC address for clients and peers, e.g. 127.0.0.1:7001.")
@click.option("--advertise", help="Address others should use to reach this node (default: --listen).")
@click.option("--metrics-listen", help="HTTP address for /metrics and /health, e.g. 127.0.0.1:9101.")
@click.option("--peers", help="Founding members: 1=host:port,2=host:port,3=host:port.")
@click.option("--peer-listen", help="TCP peer port for Raft batches, e.g. 127.0.0.1:7101 (default: none, peers "
              "reach this node over gRPC).")
@click.option("--initial-peer-addresses",
              help="Founding members' peer ports: 1=host:port,2=host:port (this node's defaults to --peer-listen).")
@click.option("--join", is_flag=True, default=None, help="Join a running cluster (be added with `kv members add`).")
@click.option("--tick-ms", type=int, help="Length of one Raft tick in milliseconds (default 50).")
@click.option("--election-ticks", type=int, help="Election timeout in ticks (default 10).")
@click.option("--heartbeat-ticks", type=int, help="Heartbeat interval in ticks (default 1).")
@click.option("--lease-reads/--no-lease-reads", default=None, help="Allow `lease` reads (depends on clock drift).")
@click.option("--lease-drift-ticks", type=int,
              help="Lease reads stop this many ticks before the election timeout (clock-drift margin, default 2).")
@click.option("--read-wait-ms", type=int,
              help="How long a follower waits to catch up for a bounded-staleness or session read (default 200).")
@click.option("--commit-notice-delay-ms", type=float,
              help="A leader tells followers of a commit with its next append, or after this long (default 5; "
              "0: at once).")
@click.option("--max-key-bytes", type=int, help="Largest key accepted (default 4096).")
@click.option("--max-value-bytes", type=int, help="Largest value accepted (default 1 MiB).")
@click.option("--max-request-bytes", type=int,
              help="Largest write request (Put, Delete, Txn, Batch), encoded (default 1.5 MiB, as etcd).")
@click.option("--max-range-bytes", type=int,
              help="A Range answer stops with `more` before this many bytes (default 2 MiB).")
@click.option("--max-range-keys", type=int, help="A Range answer holds at most this many keys (default 10000).")
@click.option("--snapshot-entries", type=int, help="Snapshot and compact after this many applied entries.")
@click.option("--snapshot-keep-entries", type=int, help="Log entries kept after compaction (default 1000).")
@click.option("--snapshot-log-bytes", type=int, help="Also snapshot once the log holds this many bytes (default 256 MiB).")
@click.option("--map-size", type=int,
              help="Most bytes this node's data.mdb may grow to (default 4 GiB); past it writes get NOSPACE.")
@click.option("--disk-reserve-bytes", type=int,
              help="Space kept in the data directory for deletes under a NOSPACE alarm (default 4 MiB; 0: none).")
@click.option("--lag-critical-entries", type=int, help="A follower this many entries behind is critical.")
@click.option("--lag-critical-seconds", type=float, help="A follower this many seconds behind is critical.")
@click.option("--default-ack", type=click.Choice(["leader", "majority", "semi_sync", "sync"]),
              help="Ack level of writes that name none (default majority).")
@click.option("--semi-sync-min-replicas", type=int, help="Default semi_sync replicas to wait for (default 1).")
@click.option("--semi-sync-timeout-ms", type=int, help="Default semi_sync wait before degrading (ms).")
@click.option("--sync-timeout-ms", type=int, help="Default sync deadline (ms).")
@click.option("--cert-file", help="PEM certificate: serve gRPC (clients and peers) over TLS only.")
@click.option("--key-file", help="PEM private key of --cert-file.")
@click.option("--trusted-ca-file", help="PEM CA for verifying peers (and clients, with --client-cert-auth).")
@click.option("--client-cert-auth", is_flag=True, default=None,
              help="Accept only connections with a certificate signed by --trusted-ca-file.")
@click.option("--peer-cert-file", help="PEM certificate presented to peers on Raft streams (default: --cert-file).")
@click.option("--peer-key-file", help="PEM private key of --peer-cert-file.")
@click.option("--peer-trusted-ca-file", help="PEM CA that must issue peers' certificates for them to speak Raft.")
@click.option("--peer-client-cert-auth", is_flag=True, default=None,
              help="Raft only from connections with a certificate issued by --peer-trusted-ca-file "
                   "(the shared port then asks every connection for a certificate).")
@click.option("--peer-cert-allowed-cn", help="Raft only from certificates with this Common Name.")
@click.option("--peer-cert-allowed-hostname", help="Raft only from certificates whose SANs name this host.")
@click.option("--initial-cluster-state", type=click.Choice(["new", "existing"]),
              help="new (default): found the cluster from --peers if the data directory is empty; "
                   "existing: refuse to start on an empty data directory.")
@click.option("--initial-cluster-token",
              help="Founders derive the cluster id from --peers and this token (default: a random id "
                   "chosen by the first leader).")
@click.option("--corruption-check-interval", type=float,
              help="Seconds between divergence checks of every member's state machine (default 0: only "
                   "`kv check hash`); a mismatch raises the CORRUPT alarm.")
@click.option("--spare-promote-after", type=float,
              help="Seconds a voter may stay unreachable before the leader promotes a caught-up spare "
                   "learner in its place and demotes it to a learner (default 30; 0: off).")
@click.option("--witnesses", help="Founding members that are witnesses (ids in --peers, e.g. 3): voters that "
                                   "hold no data. Give every founder the same value, as --peers.")
@click.option("--witness", is_flag=True, default=None,
              help="This node is a witness: it votes and keeps the log's indices and terms, holds no data and "
                   "serves no client. Its configuration (--witnesses, or `kv members add --witness`) must agree.")
@click.option("--witness-payload-after-ms", type=int,
              help="How long the oldest uncommitted write waits before the leader sends witnesses its payload, "
                   "so that their votes commit it while a data node is down (default 100).")
@click.option("--force-new-cluster", is_flag=True, default=None,
              help="After a permanent loss of quorum: start this survivor as a one-member cluster that keeps "
                   "its data (then re-add the others fresh). For one start only: remove it afterwards.")
@click.option("--history-revisions", type=int,
              help="Watch history kept, in revisions back from the newest (default 100000).")
@click.option("--history-seconds", type=float, help="Watch history kept, in seconds (default 3600).")
@click.option("--history-bytes", type=int, help="Watch history kept, in bytes (default 256 MiB).")
@click.option("--watch-buffer-events", type=int,
              help="Events queued for a slow watcher before its watch is canceled (default 10000).")
@click.option("--watch-progress-ms", type=int, help="Progress notification interval of an idle watch (default 5000).")
@click.option("--max-watches-per-stream", type=int, help="Watches one Watch stream may hold (default 1000).")
@click.option("--max-lease-ttl", type=int, help="Longest lease TTL a grant may ask for, seconds (default 9e9).")
@click.option("--overload-max-proposals", type=int,
              help="Writes in flight (admitted, not yet applied) before new writes are refused (default 4096).")
@click.option("--overload-max-proposal-bytes", type=int, help="Bytes of writes in flight, likewise (default 64 MiB).")
@click.option("--overload-max-unapplied", type=int,
              help="Committed entries not yet applied before writes are refused (default 5000, as etcd).")
@click.option("--overload-max-follower-queue-bytes", type=int,
              help="Entry bytes queued to one follower: its hard bound (then it is probed), and the write "
                   "watermark for the followers a commit needs (default 64 MiB).")
@click.option("--overload-max-ack-waiters", type=int,
              help="Writes waiting for a semi_sync/sync acknowledgement before writes are refused (default 4096).")
@click.option("--overload-max-read-waiters", type=int,
              help="Reads waiting (read round, apply, staleness proof) before reads are refused (default 8192).")
@click.option("--overload-max-watch-events", type=int,
              help="Change events queued for watchers, all together, before new watches are refused "
                   "(default 200000).")
@click.option("--overload-low-ratio", type=float,
              help="An overloaded resource accepts again below this share of its high mark (default 0.5).")
@click.option("--overload-pushback-ms", type=int, help="Base retry-after hint of an OVERLOADED refusal (default 100).")
@click.option("--overload-max-queue-delay-ms", type=int,
              help="Expected wait of a new write (writes in flight / writes answered per second) before writes "
                   "are refused: the latency bound under overload (default 250; 0: off).")
@click.option("--log-format", type=click.Choice(["auto", "json", "console"]), help="Log format.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="Log level.")
def serve(config_file: str | None, **flags: object) -> None:
    """Run one raftkv node until SIGTERM or SIGINT."""
    try:
        cfg = build_config(config_file, flags)
    except ConfigError as e:
        _fail(str(e))
        return
    from ..server.lifecycle import run_node

    sys.exit(run_node(cfg))


def build_config(config_file: str | None, flags: dict[str, object]) -> ServerConfig:
    values: dict[str, object] = ServerConfig.from_file(config_file) if config_file else {}
    rename = {"node_id": "id"}
    if flags.pop("id_from_hostname", None):
        if flags.get("node_id") is not None:
            raise ConfigError("--id and --id-from-hostname do not go together")
        flags["node_id"] = id_from_hostname(os.environ.get("HOSTNAME") or socket.gethostname())
    for k, v in flags.items():
        if v is None:
            continue
        key = rename.get(k, k)
        values[key] = parse_peers(v) if key in PEER_MAPS and isinstance(v, str) else v
    known = {f.name for f in fields(ServerConfig)}
    check_types(values)
    cfg = ServerConfig(**{k: v for k, v in values.items() if k in known})
    cfg.validate()
    return cfg


def check_types(values: dict[str, object]) -> None:
    """A setting of the wrong type (from a config file: flags are typed by click) is a usage error in one
    line, not a traceback from deep in validation."""
    for f in fields(ServerConfig):
        if f.name not in values or f.name in PEER_MAPS:
            continue
        v, default = values[f.name], f.default
        if isinstance(default, bool):
            ok = isinstance(v, bool)
        elif isinstance(default, int):
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif isinstance(default, float):
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        elif isinstance(default, str):
            ok = isinstance(v, str)
        else:
            ok = True
        if not ok:
            raise ConfigError(f"setting {f.name!r} must be {type(default).__name__}, not {type(v).__name__} ({v!r})")


def id_from_hostname(hostname: str) -> int:
    """A StatefulSet names its pods NAME-0, NAME-1, ...; raftkv ids start at 1 (0 means "nobody")."""
    m = re.search(r"-(\d+)$", hostname.split(".")[0])
    if m is None:
        raise ConfigError(f"hostname {hostname!r} does not end in -ORDINAL (as StatefulSet pods do); use --id")
    return int(m.group(1)) + 1


@main.command()
@click.option("--nodes", default=3, show_default=True, help="How many nodes.")
@click.option("--data", "data_dir", default="dev-cluster", show_default=True, help="Folder for the nodes' data.")
@click.option("--base-port", default=7001, show_default=True, help="Node i listens on base-port + i - 1.")
@click.option("--metrics-base-port", default=9101, show_default=True, help="Node i serves /metrics on this + i - 1.")
@click.option("--peer-base-port", default=None, type=click.IntRange(0, 65535),
              help="Node i takes Raft batches from its peers over TCP on this + i - 1 (default: --base-port + 100, "
                   "7101; 0: over gRPC streams).")
@click.option("--fresh", is_flag=True, help="Delete the data folder first.")
@click.option("--max-restarts", default=5, show_default=True, type=click.IntRange(0),
              help="A crashed node (signal or exit 75) is restarted at most this many times in an hour.")
@click.option("--restart-backoff", default=1.0, show_default=True, type=click.FloatRange(0.0, 30.0),
              help="Seconds before the first restart of a crashed node; doubles with each one (at most 30).")
def dev(nodes: int, data_dir: str, base_port: int, metrics_base_port: int, peer_base_port: int | None, fresh: bool,
        max_restarts: int, restart_backoff: float) -> None:
    """Run a local cluster on 127.0.0.1 in the foreground; Ctrl-C stops every node cleanly.

    A crashed node is restarted with backoff; one that exits 65 (needs an operator) or 64 never is.
    `kv dev kill|stop|restart|status` (or those words typed here) drive it (see raftkv/cli/dev_cluster.py)."""
    from .dev_cluster import run_dev_cluster

    if peer_base_port is None:
        peer_base_port = base_port + 100
    sys.exit(run_dev_cluster(nodes, data_dir, base_port, metrics_base_port, fresh, max_restarts, restart_backoff,
                             peer_base_port))


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--data-dir", required=True, help="The new member's data directory (empty or absent).")
@click.option("--id", "node_id", required=True, type=click.IntRange(1), help="The new member's id (in --peers).")
@click.option("--peers", required=True, help="The NEW cluster's members: 1=host:port,2=host:port,...")
@click.option("--initial-cluster-token", default="",
              help="Derive the new cluster id from --peers and this token (give the same to `raftkv serve`).")
def restore(file: str, data_dir: str, node_id: int, peers: str, initial_cluster_token: str) -> None:
    """Create one member's data directory of a NEW cluster from a backup made by `kv snapshot save`.

    Run it for every member with the same FILE and --peers, then start each with `raftkv serve` and the
    same --peers. Exit 0 done; 65 the file fails its SHA-256 or checksums (nothing written); 64 bad flags
    or a data directory that holds data; 75 a disk error."""
    try:
        parsed = parse_peers(peers)
        for addr in parsed.values():
            problem = address_problem(addr)
            if problem is not None:
                raise ConfigError(f"peer address {problem}")
    except ConfigError as e:
        _fail(str(e))
        return
    from ..server.restore import restore as run_restore

    sys.exit(run_restore(file, data_dir, node_id, parsed, initial_cluster_token))


if __name__ == "__main__":
    main()
