"""Plaintext HTTP for /metrics (Prometheus) and /health, /livez, /readyz (probes that cannot speak TLS).

It runs in its own thread so a scrape never waits for the event loop; the readiness answer is read from a
snapshot the host loop refreshes, never by calling into the loop."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class HttpEndpoint:
    def __init__(self, address: str, registry: CollectorRegistry, health: Callable[[], dict[str, object]]) -> None:
        host, _, port = address.rpartition(":")
        self._registry = registry
        self._health = health
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body = generate_latest(endpoint._registry)
                    self._reply(200, body, CONTENT_TYPE_LATEST)
                elif path in ("/health", "/readyz"):
                    h = endpoint._health()
                    ok = bool(h.get("ready", h.get("has_leader")))
                    self._reply(200 if ok else 503, json.dumps(h).encode(), "application/json")
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

        self._server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="raftkv-http", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
