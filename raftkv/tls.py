"""TLS for every gRPC connection raftkv makes or accepts: clients to nodes, nodes to peers, forwarding.

A node serves clients and peers on one port, with one server certificate. On its own peer streams it
presents its peer certificate (`--peer-cert-file`, by default its `--cert-file`) as a client certificate,
and the Raft service checks who that is on every stream (`PeerAuth`): issued by the peer CA, allowed by
`--peer-cert-allowed-cn` / `--peer-cert-allowed-hostname`, and naming the host of the member the stream
claims to come from. Plain HTTP /metrics and /health stay unencrypted on their own port, as probes expect.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

EXPIRY_WARNING = datetime.timedelta(days=7)


class TlsError(ValueError):
    """A TLS setting that cannot work; the message is one line for the operator or user."""


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise TlsError(f"cannot read {what} {path}: {e.strerror or e}") from None


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files: `ca` verifies the other side; `cert` + `key` identify this side (optional for clients)."""

    ca: str = ""
    cert: str = ""
    key: str = ""
    extra_ca: tuple[str, ...] = ()
    """More CA files trusted besides `ca` (a node trusts both the client and the peer CA on its port)."""

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise TlsError("a certificate and its key go together: give both or neither")

    @property
    def enabled(self) -> bool:
        return bool(self.ca or self.cert)

    def roots(self) -> bytes | None:
        """The trusted CA certificates, concatenated (None: none given)."""
        files = [f for f in (self.ca, *self.extra_ca) if f]
        if not files:
            return None
        return b"\n".join(_read(f, "CA certificate") for f in dict.fromkeys(files))

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Credentials for dialling a TLS node; with no `ca` the system's trust store is used."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.roots(),
            private_key=_read(self.key, "private key") if self.key else None,
            certificate_chain=_read(self.cert, "certificate") if self.cert else None,
        )

    def server_credentials(self, require_client_cert: bool) -> grpc.ServerCredentials:
        if not self.cert:
            raise TlsError("serving TLS needs a certificate and key")
        roots = self.roots()
        if require_client_cert and not roots:
            raise TlsError("client certificate authentication needs a trusted CA file")
        return grpc.ssl_server_credentials(
            [(_read(self.key, "private key"), _read(self.cert, "certificate"))],
            root_certificates=roots,
            require_client_auth=require_client_cert,
        )

    def client_ssl_context(self) -> ssl.SSLContext:
        """The same trust and identity as `channel_credentials`, for a raw TLS connection (the TCP peer
        port): the server's certificate must chain to `ca` (or the system's store) and name the host."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        roots = self.roots()
        if roots is not None:
            ctx.load_verify_locations(cadata=roots.decode())
        if self.cert:
            _load_chain(ctx, self.cert, self.key)
        return ctx

    def server_ssl_context(self, require_client_cert: bool) -> ssl.SSLContext:
        """The same certificate and client-certificate demand as `server_credentials`, for a raw TLS
        listener (the TCP peer port)."""
        if not self.cert:
            raise TlsError("serving TLS needs a certificate and key")
        roots = self.roots()
        if require_client_cert and not roots:
            raise TlsError("client certificate authentication needs a trusted CA file")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        _load_chain(ctx, self.cert, self.key)
        if roots is not None:
            ctx.load_verify_locations(cadata=roots.decode())
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
        return ctx


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str) -> None:
    _read(cert, "certificate"), _read(key, "private key")  # the same one-line errors as gRPC's path
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as e:
        raise TlsError(f"cannot use certificate {cert} with key {key}: {e}") from None


def auth_of_ssl(ssl_object: ssl.SSLObject | None) -> dict[str, list[bytes]]:
    """A raw TLS connection's verified client certificate, in the keys of gRPC's `auth_context()`, so
    `PeerAuth.check` judges it as it judges a gRPC stream's (empty: no certificate)."""
    if ssl_object is None:
        return {}
    der = ssl_object.getpeercert(binary_form=True)
    info = ssl_object.getpeercert()
    if not der or not info:
        return {}
    out: dict[str, list[bytes]] = {"x509_pem_cert": [ssl.DER_cert_to_PEM_cert(der).encode()]}
    for rdn in info.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                out["x509_common_name"] = [str(value).encode()]
    for kind, value in info.get("subjectAltName", ()):
        if kind == "DNS":
            out.setdefault("peer_dns", []).append(str(value).encode())
        elif kind == "IP Address":
            out.setdefault("peer_ip", []).append(str(value).strip().encode())
    return out


KEEPALIVE_OPTIONS: list[tuple[str, int]] = [
    # A connection whose other end vanished without a reset (a host powered off, a network cut, a
    # namespace deleted) would otherwise look READY until TCP gives up, minutes later, and every call on
    # it would run into its deadline. Pings every 10 s (servers allow one per 5 s) close it within ~15 s.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
]
"""Every channel a node or a client opens pings its connection (peers' streams and clients' calls alike)."""

CLIENT_CHANNEL_OPTIONS: list[tuple[str, object]] = [
    *KEEPALIVE_OPTIONS,
    # Each channel its own connections: gRPC otherwise shares one per address among all the channels of
    # a process, so one client's stuck connection (or a stream it never closed) would stall every other
    # client of the process that talks to that node.
    ("grpc.use_local_subchannel_pool", 1),
]
"""Options of the channels raftkv's clients (and a follower forwarding to its leader) open."""


def sync_channel(address: str, tls: TlsFiles | None, options: list[tuple[str, object]] | None = None
                 ) -> grpc.Channel:
    options = CLIENT_CHANNEL_OPTIONS if options is None else options
    if tls is not None and tls.enabled:
        return grpc.secure_channel(address, tls.channel_credentials(), options=options)
    return grpc.insecure_channel(address, options=options)


def aio_channel(address: str, tls: TlsFiles | None, options: list[tuple[str, object]] | None = None
                ) -> grpc.aio.Channel:
    options = CLIENT_CHANNEL_OPTIONS if options is None else options
    if tls is not None and tls.enabled:
        return grpc.aio.secure_channel(address, tls.channel_credentials(), options=options)
    return grpc.aio.insecure_channel(address, options=options)


# ----------------------------------------------------------------------------------------------
# Certificate dates
# ----------------------------------------------------------------------------------------------
def check_certificate_dates(path: str, now: datetime.datetime | None = None) -> str | None:
    """Raise TlsError (one line naming the file and its dates) if the first certificate in `path` is
    expired or not yet valid; return a warning if it expires within EXPIRY_WARNING, else None."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(_read(path, "certificate"))
    except ValueError as e:
        raise TlsError(f"certificate {path} cannot be read as PEM: {e}") from None
    now = now or datetime.datetime.now(datetime.UTC)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    dates = f"valid from {start:%Y-%m-%d %H:%M:%S} UTC to {end:%Y-%m-%d %H:%M:%S} UTC"
    if now > end:
        raise TlsError(f"certificate {path} has expired ({dates}); renew it")
    if now < start:
        raise TlsError(f"certificate {path} is not valid yet ({dates}); check the clock or the certificate")
    if end - now < EXPIRY_WARNING:
        return f"certificate {path} expires soon ({dates})"
    return None


# ----------------------------------------------------------------------------------------------
# Who is on the other end of a peer stream
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """What a connection's client certificate says about its holder."""

    common_name: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]

    def describe(self) -> str:
        names = [f"CN={self.common_name}"] if self.common_name else []
        return ", ".join(names + list(self.dns_names) + list(self.ip_addresses)) or "no names"

    def names_host(self, host: str) -> bool:
        """Whether the certificate was issued for `host` (a SAN DNS name, wildcards one label deep, or a
        SAN IP address), as a client checks a server's certificate."""
        host = host.strip("[]").lower()
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is not None:
            return any(_same_ip(ip, a) for a in self.ip_addresses)
        for name in self.dns_names:
            name = name.lower()
            if name == host:
                return True
            if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
                return True
        return False


def _same_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, text: str) -> bool:
    try:
        return ipaddress.ip_address(text) == ip
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class PeerRefusal:
    code: grpc.StatusCode
    message: str


@dataclass(slots=True)
class PeerAuth:
    """The Raft service's check of a connection's client certificate (from `context.auth_context()`).

    `required`: the port asks every connection for a certificate (`--client-cert-auth` or
    `--peer-client-cert-auth`), so a peer is known by its certificate; without that, nothing can be
    checked and this only reports `enabled = False`. `ca_files`: the certificate must be issued directly
    by one of the CAs in these files (`--peer-trusted-ca-file`; empty: the port's CA check is enough).
    `allowed_cn` / `allowed_hostname`: as etcd's `--peer-cert-allowed-cn` / `--peer-cert-allowed-hostname`."""

    required: bool = False
    ca_files: Sequence[str] = ()
    allowed_cn: str = ""
    allowed_hostname: str = ""
    _cas: list[object] = field(default_factory=list)

    def __post_init__(self) -> None:
        from cryptography import x509

        for f in self.ca_files:
            try:
                self._cas.extend(x509.load_pem_x509_certificates(_read(f, "peer CA certificate")))
            except ValueError as e:
                raise TlsError(f"peer CA certificate {f} cannot be read as PEM: {e}") from None

    @property
    def enabled(self) -> bool:
        return self.required

    def check(self, auth: Mapping[str, Sequence[bytes]]) -> PeerIdentity | PeerRefusal:
        """The identity of a connection allowed to speak Raft, or why it is not."""
        pem = b"".join(auth.get("x509_pem_cert", ()))
        if not pem:
            return PeerRefusal(grpc.StatusCode.UNAUTHENTICATED,
                               "Raft is spoken only by peers: this connection presented no certificate")
        ident = PeerIdentity(
            common_name=b"".join(auth.get("x509_common_name", ())).decode(errors="replace"),
            dns_names=tuple(v.decode(errors="replace") for v in auth.get("peer_dns", ())),
            ip_addresses=tuple(v.decode(errors="replace") for v in auth.get("peer_ip", ())),
        )
        if self._cas and not self._issued_by_peer_ca(pem):
            return PeerRefusal(grpc.StatusCode.PERMISSION_DENIED,
                               f"certificate ({ident.describe()}) is not issued by the peer CA")
        if self.allowed_cn and ident.common_name != self.allowed_cn:
            return PeerRefusal(grpc.StatusCode.PERMISSION_DENIED,
                               f"certificate ({ident.describe()}) is not a peer's: CN must be {self.allowed_cn}")
        if self.allowed_hostname and not ident.names_host(self.allowed_hostname):
            return PeerRefusal(grpc.StatusCode.PERMISSION_DENIED,
                               f"certificate ({ident.describe()}) is not a peer's: it must name "
                               f"{self.allowed_hostname}")
        return ident

    def _issued_by_peer_ca(self, pem: bytes) -> bool:
        from cryptography import x509

        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            return False
        for ca in self._cas:
            try:
                cert.verify_directly_issued_by(ca)  # type: ignore[arg-type]
                return True
            except (ValueError, TypeError, Exception):  # noqa: BLE001 - any failure means "not this CA"
                continue
        return False
