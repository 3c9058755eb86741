"""A node's settings, from flags and/or a TOML file (flags win)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..tls import PeerAuth, TlsError, TlsFiles

RECEIVE_HEADROOM = 1 << 20
"""What the gRPC port reads beyond the larger of `max_request_bytes` and a Raft append's 1 MiB of entries:
protobuf framing of a request and of a peer batch's messages."""
MAX_REQUEST_BYTES = 1 << 30


class ConfigError(ValueError):
    """A setting that makes no sense; the message is one line meant for the operator."""


def parse_peers(spec: str) -> dict[int, str]:
    """`1=127.0.0.1:7001,2=127.0.0.1:7002` -> {1: '127.0.0.1:7001', 2: ...} (like etcd's --initial-cluster)."""
    peers: dict[int, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if "=" not in part:
            raise ConfigError(f"peer {part!r} must look like ID=HOST:PORT")
        nid, addr = part.split("=", 1)
        try:
            node_id = int(nid)
        except ValueError:
            raise ConfigError(f"peer id {nid!r} is not a number") from None
        if node_id <= 0:
            raise ConfigError(f"peer id {node_id} must be >= 1")
        if ":" not in addr:
            raise ConfigError(f"peer address {addr!r} must be HOST:PORT")
        if node_id in peers:
            raise ConfigError(f"peer id {node_id} appears twice")
        peers[node_id] = addr
    return peers


def parse_witnesses(spec: str) -> frozenset[int]:
    """`3` or `3,5` -> {3, 5}."""
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if not part.isdigit() or int(part) <= 0:
            raise ConfigError(f"witness id {part!r} must be a positive integer")
        out.add(int(part))
    return frozenset(out)


PEER_MAPS = ("peers", "initial_peer_addresses")
"""Settings written ID=HOST:PORT,... (parse_peers)."""
MIN_MAP_SIZE = 1 << 20
MAX_MAP_SIZE = 1 << 40


def address_problem(address: str) -> str | None:
    """Why `address` is not a usable HOST:PORT, or None if it is.

    The host must be non-empty (an IPv6 literal goes in brackets: `[::1]:7001`) and the port a number in
    1..65535: gRPC binds a port it cannot parse to some other port without a word, so a typo such as
    `127.0.0.1:99999` would leave the node listening where nobody looks."""
    host, sep, port = address.rpartition(":")
    if not sep:
        return f"{address!r} must be HOST:PORT"
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            return f"{address!r}: an IPv6 host goes in brackets, as [::1]:7001"
    elif not host:
        return f"{address!r} has no host"
    elif ":" in host or "]" in host:
        return f"{address!r}: an IPv6 host goes in brackets, as [::1]:7001"
    if not port.isdigit():
        return f"{address!r}: port {port!r} is not a number"
    if not 1 <= int(port) <= 65535:
        return f"{address!r}: port {int(port)} is out of range (1..65535)"
    return None


@dataclass(slots=True)
class ServerConfig:
    id: int = 0
    data_dir: str = ""
    listen: str = "127.0.0.1:7001"
    """gRPC address for clients (KV, Admin) and peers (Raft)."""
    advertise: str = ""
    """Address other nodes and clients should use (defaults to `listen`)."""
    metrics_listen: str = ""
    """host:port for plaintext HTTP /metrics and /health ("" = off)."""
    peers: dict[int, str] = field(default_factory=dict)
    """Founding members (id -> address). Empty with `join` for a node added to a running cluster."""
    peer_listen: str = ""
    """HOST:PORT of the TCP peer port (transport/tcp_peer.py): Raft batches as length-prefixed frames, which
    peers that know it use instead of gRPC streams ("" = none: peers reach this node over gRPC)."""
    initial_peer_addresses: dict[int, str] = field(default_factory=dict)
    """Founding members' TCP peer ports (id -> HOST:PORT), recorded with `peers` in the founding membership.
    This node's own entry defaults to `peer_listen`; members left out are reached over gRPC."""
    join: bool = False
    """Start empty and wait to be added by `kv members add` instead of founding a cluster."""
    tick_ms: int = 50
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    lease_reads: bool = False
    """Allow `lease` reads (opt-in: they depend on bounded clock drift between nodes)."""
    lease_drift_ticks: int = 2
    max_key_bytes: int = 4096
    max_value_bytes: int = 1 << 20
    max_txn_ops: int = 128
    snapshot_entries: int = 10_000
    """Take a snapshot and compact the log once this many entries are applied past the last one."""
    snapshot_keep_entries: int = 1_000
    """Entries kept after compaction, so a briefly lagging follower still catches up from the log."""
    snapshot_log_bytes: int = 256 << 20
    """Also snapshot once the log holds this many bytes (big values fill a disk before the entry count)."""
    default_ack: str = "majority"
    """Ack level of writes that name none: leader, majority, semi_sync or sync."""
    semi_sync_min_replicas: int = 1
    semi_sync_timeout_ms: int = 1000
    sync_timeout_ms: int = 5000
    lag_critical_entries: int = 10_000
    lag_critical_seconds: float = 10.0
    read_wait_ms: int = 200
    """How long a follower waits to catch up for a bounded-staleness or session read before forwarding."""
    commit_notice_delay_ms: float = 5.0
    """A leader tells its followers of a commit with the next append, or after this long when none comes
    (server/commit_notice.py); 0: at once, as etcd."""
    map_size: int = 4 << 30
    """LMDB's map size: the most this node's data.mdb may grow to (writes then get NOSPACE)."""
    disk_reserve_bytes: int = 4 << 20
    """A file of this size kept in the data directory and released on a full disk, so the node can still
    persist deletes under its NOSPACE alarm (storage/disk_space.py); 0: none."""
    cert_file: str = ""
    """PEM certificate: with `key_file`, the gRPC port (clients and peers) speaks TLS only."""
    key_file: str = ""
    trusted_ca_file: str = ""
    """PEM CA that peers' (and, with `client_cert_auth`, clients') certificates must chain to."""
    client_cert_auth: bool = False
    """Refuse connections without a certificate signed by `trusted_ca_file` (peers included)."""
    peer_cert_file: str = ""
    """PEM certificate this node presents to peers on its Raft streams (default: `cert_file`)."""
    peer_key_file: str = ""
    peer_trusted_ca_file: str = ""
    """PEM CA that issues peer certificates: peers' certificates must be issued by it to speak Raft."""
    peer_client_cert_auth: bool = False
    """Raft only from connections with a peer certificate (the port then asks every connection for one)."""
    peer_cert_allowed_cn: str = ""
    """Raft only from certificates with this Common Name (etcd's --peer-cert-allowed-cn)."""
    peer_cert_allowed_hostname: str = ""
    """Raft only from certificates whose SANs name this host (etcd's --peer-cert-allowed-hostname)."""
    history_revisions: int = 100_000
    """Watch history kept: at most this many revisions back (trimmed when the log is compacted)."""
    history_seconds: float = 3600.0
    """Watch history kept: no event older than this many seconds (trimmed when the log is compacted)."""
    history_bytes: int = 256 << 20
    """Watch history kept: at most about this many bytes (events carry values; trimmed at compaction)."""
    watch_buffer_events: int = 10_000
    """Events queued for one watch whose client reads too slowly before it is canceled (RESOURCE_EXHAUSTED)."""
    watch_progress_ms: int = 5_000
    """An idle watch gets a progress notification (the revision it may resume after) this often."""
    max_watches_per_stream: int = 1_000
    max_lease_ttl: int = 9_000_000_000
    """Longest lease TTL in seconds a grant may ask for (etcd's MaxLeaseTTL)."""
    initial_cluster_state: str = "new"
    """`new`: found the cluster with `peers` if the data directory is empty; `existing`: refuse to start
    on an empty data directory (a member that lost its data must be removed and re-added)."""
    initial_cluster_token: str = ""
    """Mixed into the founding cluster id, so founders agree on it without talking (etcd's flag)."""
    log_format: str = "auto"
    """auto (readable on a terminal, JSON otherwise), json or console."""
    log_level: str = "info"
    max_request_bytes: int = 3 << 19
    """Largest write request (Put, Delete, Txn, a Batch and each of its writes), as its encoded size; etcd's
    --max-request-bytes (1.5 MiB). The gRPC port reads at most this plus `RECEIVE_HEADROOM` per message."""
    max_range_bytes: int = 2 << 20
    """A Range answer stops (with `more`) before it holds this many bytes of keys and values (at least
    one key is always returned); well under a client's default 4 MiB receive limit."""
    max_range_keys: int = 10_000
    """A Range answer holds at most this many keys (with `more` when there are others)."""
    corruption_check_interval: float = 0.0
    """Seconds between divergence checks on the leader (0: only on request, `kv check hash`)."""
    spare_promote_after: float = 30.0
    """Seconds a voter must stay unreachable before the leader replaces it with a caught-up hot spare
    (a learner marked spare): promote the spare, then demote the dead voter (spares.py). 0: off."""
    witnesses: str = ""
    """Founding members (ids in `peers`, comma-separated) that are witnesses: voters holding no data. Every
    founder must be given the same list, as `peers` (the founding log is the same on every node)."""
    witness: bool = False
    """This node is a witness; its configuration (`witnesses`, or the log) must say so too."""
    witness_payload_after_ms: int = 100
    """How long the oldest uncommitted write waits before the leader sends witnesses payloads (so their
    votes commit while a data node is down); rounded up to whole ticks."""
    force_new_cluster: bool = False
    """Start as the only member of a one-member cluster that keeps this node's data (server/force_new.py)."""
    # Admission control (layers/admission.py): high watermarks; each low mark is `overload_low_ratio` of it.
    overload_max_proposals: int = 4096
    overload_max_proposal_bytes: int = 64 << 20
    overload_max_unapplied: int = 5000
    overload_max_follower_queue_bytes: int = 64 << 20
    """Also the hard bound of entry bytes queued to any one follower (beyond it the follower is probed)."""
    overload_max_ack_waiters: int = 4096
    overload_max_read_waiters: int = 8192
    overload_max_watch_events: int = 200_000
    """Change events queued for all watchers on this node together before new watches are refused."""
    overload_low_ratio: float = 0.5
    overload_pushback_ms: int = 100
    overload_max_queue_delay_ms: int = 250
    """Expected wait of a new write (writes in flight / answer rate) before writes are refused; 0: off."""

    @property
    def address(self) -> str:
        return self.advertise or self.listen

    @property
    def tls(self) -> TlsFiles | None:
        """This node's TLS files, or None for plaintext gRPC."""
        if not (self.cert_file or self.key_file or self.trusted_ca_file):
            return None
        return TlsFiles(self.trusted_ca_file, self.cert_file, self.key_file)

    @property
    def grpc_receive_limit(self) -> int:
        """The gRPC port's max_receive_message_length, shared by clients and peers (gRPC applies it per
        server): client requests are refused by gRPC before they are read whole, and peer batches and
        snapshot chunks are sized to stay under it (see `peer_batch_bytes`)."""
        return max(self.max_request_bytes, 1 << 20) + RECEIVE_HEADROOM

    @property
    def peer_batch_bytes(self) -> int:
        """Budget of one peer batch (and of one snapshot chunk): under `grpc_receive_limit` with room for
        framing. A single message over it (one entry of a maximal request) still goes alone."""
        return self.grpc_receive_limit - RECEIVE_HEADROOM // 2

    @property
    def peer_tls_configured(self) -> bool:
        return bool(self.peer_cert_file or self.peer_key_file or self.peer_trusted_ca_file
                    or self.peer_client_cert_auth or self.peer_cert_allowed_cn or self.peer_cert_allowed_hostname)

    @property
    def server_tls(self) -> TlsFiles | None:
        """What the one gRPC port (clients and peers) serves with: its certificate is `cert_file` (or the
        peer certificate when only that is given), and it trusts the client and the peer CA."""
        if self.tls is None and not self.peer_tls_configured:
            return None
        return TlsFiles(self.trusted_ca_file, self.cert_file or self.peer_cert_file,
                        self.key_file if self.cert_file else self.peer_key_file,
                        (self.peer_trusted_ca_file,) if self.peer_trusted_ca_file else ())

    @property
    def peer_tls(self) -> TlsFiles | None:
        """What this node presents and trusts when it dials a peer (or forwards to one)."""
        if self.tls is None and not self.peer_tls_configured:
            return None
        cert, key = (self.peer_cert_file, self.peer_key_file) if self.peer_cert_file else (self.cert_file,
                                                                                          self.key_file)
        return TlsFiles(self.peer_trusted_ca_file or self.trusted_ca_file, cert, key,
                        (self.trusted_ca_file,) if self.trusted_ca_file else ())

    @property
    def requires_client_certs(self) -> bool:
        """The port asks every connection for a certificate (gRPC cannot ask peers only)."""
        return self.client_cert_auth or self.peer_client_cert_auth

    def peer_auth(self) -> PeerAuth:
        """How the Raft service tells a peer (see tls.PeerAuth)."""
        return PeerAuth(required=self.requires_client_certs,
                        ca_files=(self.peer_trusted_ca_file,) if self.peer_trusted_ca_file else (),
                        allowed_cn=self.peer_cert_allowed_cn, allowed_hostname=self.peer_cert_allowed_hostname)

    def validate(self) -> None:
        if self.id <= 0:
            raise ConfigError("--id must be a positive integer")
        if not self.data_dir:
            raise ConfigError("--data-dir is required")
        if self.join and self.peers:
            raise ConfigError("--join and --peers do not go together: a joining node learns members from the leader")
        if not self.join:
            if not self.peers:
                self.peers = {self.id: self.address}
            if self.id not in self.peers:
                raise ConfigError(f"--peers does not list this node's id {self.id}")
        if self.tick_ms <= 0:
            raise ConfigError("--tick-ms must be > 0")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ConfigError("--election-ticks must be greater than --heartbeat-ticks")
        if not 0 <= self.lease_drift_ticks < self.election_ticks:
            raise ConfigError("--lease-drift-ticks must be in [0, election-ticks)")
        if self.max_key_bytes <= 0 or self.max_value_bytes <= 0:
            raise ConfigError("size limits must be positive")
        if self.default_ack not in ("leader", "majority", "semi_sync", "sync"):
            raise ConfigError("--default-ack must be leader, majority, semi_sync or sync")
        if self.semi_sync_min_replicas < 1 or self.semi_sync_timeout_ms < 1 or self.sync_timeout_ms < 1:
            raise ConfigError("semi-sync replicas and write timeouts must be >= 1")
        if self.lag_critical_entries < 1 or self.lag_critical_seconds <= 0:
            raise ConfigError("--lag-critical-entries must be >= 1 and --lag-critical-seconds > 0")
        if not MIN_MAP_SIZE <= self.map_size <= MAX_MAP_SIZE:
            raise ConfigError(f"--map-size must be between {MIN_MAP_SIZE} (1 MiB) and {MAX_MAP_SIZE} (1 TiB) bytes")
        if self.read_wait_ms < 0:
            raise ConfigError("--read-wait-ms must be >= 0")
        if not 0 <= self.commit_notice_delay_ms <= 1000:
            raise ConfigError("--commit-notice-delay-ms must be between 0 and 1000")
        self._validate_bounds()
        self._validate_overload()
        if self.log_format not in ("auto", "json", "console"):
            raise ConfigError("--log-format must be auto, json or console")
        self.validate_addresses()
        try:
            tls = self.tls
        except TlsError as e:
            raise ConfigError(f"--cert-file/--key-file: {e}") from None
        if tls is not None and not tls.cert:
            raise ConfigError("--trusted-ca-file needs --cert-file and --key-file: peers verify this node too")
        if self.client_cert_auth and not self.trusted_ca_file:
            raise ConfigError("--client-cert-auth needs --trusted-ca-file")
        self._validate_identity()
        self._validate_peer_port()

    def _validate_peer_port(self) -> None:
        """--peer-listen and --initial-peer-addresses: addresses, and one founding description."""
        if self.peer_listen:
            problem = address_problem(self.peer_listen)
            if problem is not None:
                raise ConfigError(f"--peer-listen: {problem}")
            if self.peer_listen in (self.listen, self.metrics_listen):
                raise ConfigError(f"--peer-listen {self.peer_listen} is also the gRPC or metrics address: give "
                                  f"the peer port a port of its own")
        if self.initial_peer_addresses and self.join:
            raise ConfigError("--initial-peer-addresses describes the founders: a --join node's peer port is "
                              "given with `kv members add --peer-addr`")
        for nid, addr in sorted(self.initial_peer_addresses.items()):
            if nid not in self.peers:
                raise ConfigError(f"--initial-peer-addresses names node {nid}, which --peers does not list")
            problem = address_problem(addr)
            if problem is not None:
                raise ConfigError(f"--initial-peer-addresses (node {nid}): {problem}")
        own = self.initial_peer_addresses.get(self.id)
        if own is not None and own != self.peer_listen:
            raise ConfigError(f"--initial-peer-addresses gives node {self.id} the peer port {own}, but "
                              f"--peer-listen is {self.peer_listen or 'not set'}")
        if self.peer_listen and not self.join and self.id not in self.initial_peer_addresses:
            self.initial_peer_addresses = {**self.initial_peer_addresses, self.id: self.peer_listen}

    def _validate_identity(self) -> None:
        """The peer TLS and cluster identity settings."""
        if bool(self.peer_cert_file) != bool(self.peer_key_file):
            raise ConfigError("--peer-cert-file and --peer-key-file go together: give both or neither")
        if self.peer_tls_configured and not (self.cert_file or self.peer_cert_file):
            raise ConfigError("--peer-* settings need a certificate: --peer-cert-file/--peer-key-file "
                              "(or --cert-file/--key-file)")
        if self.peer_client_cert_auth and not self.peer_trusted_ca_file:
            raise ConfigError("--peer-client-cert-auth needs --peer-trusted-ca-file")
        if (self.peer_cert_allowed_cn or self.peer_cert_allowed_hostname) and not self.requires_client_certs:
            raise ConfigError("--peer-cert-allowed-cn/--peer-cert-allowed-hostname need --peer-client-cert-auth "
                              "(or --client-cert-auth): without it peers present no certificate to check")
        if self.initial_cluster_state not in ("new", "existing"):
            raise ConfigError("--initial-cluster-state must be new or existing")
        if self.corruption_check_interval < 0:
            raise ConfigError("--corruption-check-interval must be >= 0 seconds (0: off)")
        self._validate_witnesses()
        if self.spare_promote_after < 0:
            raise ConfigError("--spare-promote-after must be >= 0 seconds (0: off)")
        if self.force_new_cluster and self.join:
            raise ConfigError("--force-new-cluster keeps this node's data: it does not go with --join")
        if self.join and self.initial_cluster_token:
            raise ConfigError("--initial-cluster-token names a founding cluster: a --join node learns the "
                              "cluster id from the leader")

    def witness_ids(self) -> frozenset[int]:
        """The founding witnesses named by `witnesses` (validated by `validate`)."""
        return parse_witnesses(self.witnesses)

    def _validate_witnesses(self) -> None:
        ids = self.witness_ids()
        if self.witness_payload_after_ms < 0:
            raise ConfigError("--witness-payload-after-ms must be >= 0")
        if self.join:
            if ids:
                raise ConfigError("--witnesses names founding members: a joining node is added with "
                                  "`kv members add ID ADDR --witness` and started with --witness")
            return
        if not ids <= set(self.peers):
            raise ConfigError(f"--witnesses names node(s) {sorted(ids - set(self.peers))} not in --peers")
        if not set(self.peers) - ids:
            raise ConfigError("--witnesses names every member: a cluster needs at least one data node")
        if self.witness and self.id not in ids:
            raise ConfigError(f"node {self.id} is started with --witness, but --witnesses "
                              f"({self.witnesses or 'none'}) does not name it")
        if not self.witness and self.id in ids:
            raise ConfigError(f"--witnesses names node {self.id}: start it with --witness (it holds no data)")

    def _validate_bounds(self) -> None:
        """Numeric settings that are zero or negative where that makes no sense, and request limits that
        would refuse what the key and value limits allow."""
        at_least = (("--heartbeat-ticks", self.heartbeat_ticks, 1), ("--max-txn-ops", self.max_txn_ops, 1),
                    ("--snapshot-entries", self.snapshot_entries, 1),
                    ("--snapshot-keep-entries", self.snapshot_keep_entries, 0),
                    ("--snapshot-log-bytes", self.snapshot_log_bytes, 1), ("map_size", self.map_size, 1 << 20),
                    ("--max-range-bytes", self.max_range_bytes, 1), ("--max-range-keys", self.max_range_keys, 1),
                    ("--disk-reserve-bytes", self.disk_reserve_bytes, 0),
                    ("--history-revisions", self.history_revisions, 1),
                    ("--history-bytes", self.history_bytes, 1),
                    ("--watch-buffer-events", self.watch_buffer_events, 1),
                    ("--watch-progress-ms", self.watch_progress_ms, 1),
                    ("--max-watches-per-stream", self.max_watches_per_stream, 1),
                    ("--max-lease-ttl", self.max_lease_ttl, 1))
        for flag, value, low in at_least:
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{flag} must be an integer >= {low}, not {value!r}")
        if not self.history_seconds > 0:
            raise ConfigError(f"--history-seconds must be > 0, not {self.history_seconds!r}")
        need = self.max_key_bytes + self.max_value_bytes + 1024
        if not need <= self.max_request_bytes <= MAX_REQUEST_BYTES:
            raise ConfigError(f"--max-request-bytes must be in [{need}, {MAX_REQUEST_BYTES}] (at least "
                              f"--max-key-bytes + --max-value-bytes + 1024, so the largest key and value fit in "
                              f"one request), not {self.max_request_bytes}")

    def _validate_overload(self) -> None:
        """The admission-control watermarks: positive high marks, a low ratio strictly between 0 and 1."""
        for name in ("proposals", "proposal_bytes", "unapplied", "follower_queue_bytes", "ack_waiters",
                     "read_waiters", "watch_events", "pushback_ms"):
            value = getattr(self, f"overload_{'' if name == 'pushback_ms' else 'max_'}{name}")
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                flag = f"--overload-{'' if name == 'pushback_ms' else 'max-'}{name.replace('_', '-')}"
                raise ConfigError(f"{flag} must be an integer >= 1, not {value!r}")
        delay = self.overload_max_queue_delay_ms
        if not isinstance(delay, int) or isinstance(delay, bool) or delay < 0:
            raise ConfigError(f"--overload-max-queue-delay-ms must be an integer >= 0 (0: off), not {delay!r}")
        if not isinstance(self.overload_low_ratio, (int, float)) or not 0 < self.overload_low_ratio < 1:
            raise ConfigError(f"--overload-low-ratio must be between 0 and 1 (exclusive), not "
                              f"{self.overload_low_ratio!r}")

    def validate_addresses(self) -> None:
        """Every address this node listens on or dials must be HOST:PORT with a port in 1..65535."""
        named = [("--listen", self.listen), ("--advertise", self.advertise), ("--metrics-listen", self.metrics_listen)]
        named += [(f"--peers (node {nid})", addr) for nid, addr in sorted(self.peers.items())]
        for flag, addr in named:
            if flag in ("--advertise", "--metrics-listen") and not addr:
                continue  # optional
            problem = address_problem(addr)
            if problem is not None:
                raise ConfigError(f"{flag}: {problem}")

    @staticmethod
    def from_file(path: str | Path) -> dict[str, object]:
        """Settings from a TOML file, as a dict of field values (unknown keys are an error)."""
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from None
        known = {f.name for f in fields(ServerConfig)}
        out: dict[str, object] = {}
        for k, v in raw.items():
            key = k.replace("-", "_")
            if key not in known:
                raise ConfigError(f"unknown setting {k!r} in {path}")
            out[key] = parse_peers(v) if key in PEER_MAPS and isinstance(v, str) else v
        return out
