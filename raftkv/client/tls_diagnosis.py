"""Naming the cause of a TLS connection failure, so the user reads "node X requires a client certificate"
instead of gRPC's "failed to connect to all addresses ... Socket closed" after seconds of retries.

gRPC words some causes itself (a certificate that does not verify, TLS against a plaintext port). The
others reach the client only as a closed socket, because the server hangs up after the handshake: a
missing, expired or foreign client certificate, or a plaintext client on a TLS port. For those, one
diagnostic handshake with Python's `ssl` module and the same files tells them apart; it is tried only
after gRPC has failed to connect, never on the normal path.
"""

from __future__ import annotations

import datetime
import re
import socket
import ssl

from ..tls import TlsFiles

# How gRPC (BoringSSL) words a handshake that failed on this side.
_VERIFY_FAILED = re.compile(r"CERTIFICATE_VERIFY_FAILED: ([^:]+)")
_NOT_TLS = ("WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST", "RECORD_LAYER_FAILURE")
# The first bytes an HTTP/2 client sends: its preface and an empty SETTINGS frame. A gRPC server that
# accepted the handshake answers with its own SETTINGS; one that refused our certificate hangs up.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def may_be_tls(message: str) -> bool:
    """Could this connection failure have a TLS cause? (Not for a refused connection or a DNS error.)"""
    low = message.lower()
    return "failed to connect" in low and ("socket closed" in low or "handshake" in low or "ssl" in low
                                           or "connection reset" in low or "end of file" in low)


def diagnose(address: str, tls: TlsFiles | None, grpc_message: str, timeout: float) -> str | None:
    """One line naming the TLS cause of a failed connection to `address`, or None if it is not TLS."""
    secure = tls is not None and tls.enabled
    if secure:
        m = _VERIFY_FAILED.search(grpc_message)
        if m:
            return _untrusted(address, m.group(1).strip())
        if any(marker in grpc_message for marker in _NOT_TLS):
            return _plaintext_node(address)
    try:
        return _probe(address, tls if secure else None, timeout)
    except (OSError, ValueError):
        return None  # cannot reach it at all, or an address we cannot parse: not a TLS cause


def _untrusted(address: str, why: str) -> str:
    if "expired" in why:
        return f"TLS: the certificate of node {address} has expired ({why}): the node needs a renewed certificate"
    return (f"TLS: node {address} presented a certificate that is not trusted: {why} "
            "(give the CA that signed the nodes' certificates with --cacert)")


def _plaintext_node(address: str) -> str:
    return f"TLS: node {address} does not speak TLS (a plaintext port): connect without --cacert/--cert/--key"


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _probe(address: str, tls: TlsFiles | None, timeout: float) -> str | None:
    host, port = _host_port(address)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_alpn_protocols(["h2"])
    if tls is None:  # a plaintext client: does the node speak TLS?
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        if tls.ca:
            ctx.load_verify_locations(tls.ca)
        else:
            ctx.load_default_certs()
        if tls.cert:
            ctx.load_cert_chain(tls.cert, tls.key)
    with socket.create_connection((host, port), timeout=max(timeout, 0.05)) as raw:
        try:
            conn = ctx.wrap_socket(raw, server_hostname=host)
        except ssl.SSLCertVerificationError as e:
            return _untrusted(address, e.verify_message or str(e))
        except ssl.SSLError as e:
            if tls is not None and e.reason in _NOT_TLS:
                return _plaintext_node(address)
            return None
        if tls is None:
            conn.close()
            return (f"TLS: node {address} speaks TLS and this client connects in plaintext: give the CA with "
                    "--cacert (and --cert/--key if the cluster requires client certificates)")
        try:
            conn.sendall(_H2_PREFACE)
            answer = conn.recv(9)
        except (ssl.SSLError, OSError) as e:
            answer = b"" if isinstance(e, (ssl.SSLError, ConnectionError)) else b"?"
        finally:
            conn.close()
    if answer:
        return None  # the node accepted this handshake: the failure was not TLS
    return _client_refused(address, tls)


def _client_refused(address: str, tls: TlsFiles) -> str:
    """The node completed the handshake and hung up: it did not accept this client's certificate."""
    if not tls.cert:
        return f"TLS: node {address} requires a client certificate: give --cert and --key"
    info = _certificate_info(tls.cert)
    not_after = info.get("not_after")
    if isinstance(not_after, datetime.datetime) and not_after < datetime.datetime.now(datetime.UTC):
        return (f"TLS: node {address} refused the client certificate {tls.cert}: it expired on "
                f"{not_after:%Y-%m-%d %H:%M} UTC")
    who = ", ".join(f"{k} {v}" for k, v in (("subject", info.get("subject")), ("issuer", info.get("issuer"))) if v)
    return (f"TLS: node {address} refused the client certificate {tls.cert}{f' ({who})' if who else ''}: it "
            "must be signed by a CA the cluster trusts (the nodes' --trusted-ca-file)")


def _certificate_info(path: str) -> dict[str, object]:
    """Subject, issuer and expiry of a PEM certificate, as far as this Python can read them (the standard
    library decodes certificates only through a test helper; `cryptography` is used when installed)."""
    try:
        from cryptography import x509

        with open(path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
                "not_after": cert.not_valid_after_utc}
    except Exception:  # noqa: BLE001 - missing library or unreadable file: fall back
        pass
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:
        return {}
    try:
        d = decode(path)
    except Exception:  # noqa: BLE001 - a detail for the message, never a reason to fail
        return {}

    def name(rdns: object) -> str:
        return ",".join(f"{k}={v}" for rdn in rdns or () for k, v in rdn)  # type: ignore[attr-defined]

    not_after = d.get("notAfter")
    return {"subject": name(d.get("subject")), "issuer": name(d.get("issuer")),
            "not_after": datetime.datetime.fromtimestamp(ssl.cert_time_to_seconds(not_after), datetime.UTC)
            if not_after else None}
