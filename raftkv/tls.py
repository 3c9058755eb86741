"""TLS for every gRPC connection raftkv makes or accepts: clients to nodes, nodes to peers, forwarding.

One node has one certificate, used both ways: as a server for clients and peers, and as the client
certificate on its own peer streams and forwarded requests (so `client_cert_auth` also authenticates
peers). Plain HTTP /metrics and /health stay unencrypted on their own port, as probes expect.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


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

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise TlsError("a certificate and its key go together: give both or neither")

    @property
    def enabled(self) -> bool:
        return bool(self.ca or self.cert)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Credentials for dialling a TLS node; with no `ca` the system's trust store is used."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, "CA certificate") if self.ca else None,
            private_key=_read(self.key, "private key") if self.key else None,
            certificate_chain=_read(self.cert, "certificate") if self.cert else None,
        )

    def server_credentials(self, require_client_cert: bool) -> grpc.ServerCredentials:
        if not self.cert:
            raise TlsError("serving TLS needs a certificate and key")
        if require_client_cert and not self.ca:
            raise TlsError("client certificate authentication needs a trusted CA file")
        return grpc.ssl_server_credentials(
            [(_read(self.key, "private key"), _read(self.cert, "certificate"))],
            root_certificates=_read(self.ca, "CA certificate") if self.ca else None,
            require_client_auth=require_client_cert,
        )


def sync_channel(address: str, tls: TlsFiles | None, options: list[tuple[str, object]] | None = None
                 ) -> grpc.Channel:
    if tls is not None and tls.enabled:
        return grpc.secure_channel(address, tls.channel_credentials(), options=options)
    return grpc.insecure_channel(address, options=options)


def aio_channel(address: str, tls: TlsFiles | None, options: list[tuple[str, object]] | None = None
                ) -> grpc.aio.Channel:
    if tls is not None and tls.enabled:
        return grpc.aio.secure_channel(address, tls.channel_credentials(), options=options)
    return grpc.aio.insecure_channel(address, options=options)
