"""Plaintext HTTP for /metrics (Prometheus) and /health, /livez, /readyz (probes that cannot speak TLS).

It runs in its own thread so a scrape never waits for the event loop; the readiness answer is read from a
snapshot the host loop refreshes, never by calling into the loop."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .. import hop_trace

log = structlog.get_logger("raftkv.http")

IDLE_TIMEOUT_S = 10.0
"""A connection that sends nothing for this long is closed (its thread would otherwise wait forever)."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A scraper or probe that hangs up mid-request is routine: one debug line, not socketserver's
        multi-line traceback on stderr."""
        e = sys.exc_info()[1]
        log.debug("metrics connection dropped", client=f"{client_address[0]}:{client_address[1]}", error=repr(e))


class HttpEndpoint:
    def __init__(self, address: str, registry: CollectorRegistry, health: Callable[[], dict[str, object]]) -> None:
        host, _, port = address.rpartition(":")
        self._registry = registry
        self._health = health
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            timeout = IDLE_TIMEOUT_S

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body = generate_latest(endpoint._registry)
                    self._reply(200, body, CONTENT_TYPE_LATEST)
                elif path in ("/health", "/readyz"):
                    h = endpoint._health()
                    ok = bool(h.get("ready", h.get("has_leader")))
                    self._reply(200 if ok else 503, json.dumps(h).encode(), "application/json")
                elif path == "/debug/hops" and hop_trace.ON:
                    # Only with RAFTKV_TRACE_HOPS=1 (benchmarks): the hops recorded since the last call.
                    self._reply(200, json.dumps(hop_trace.drain()).encode(), "application/json")
                elif path == "/livez":
                    self._reply(200, b'{"live": true}', "application/json")
                else:
                    self._reply(404, b"not found\n", "text/plain")

            def _reply(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return  # scrapes are not worth a log line each

        self._server = _Server((host or "127.0.0.1", int(port)), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="raftkv-http", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
