"""/livez, /readyz, /metrics, /search and POST /resync while `syncd run` is running.

/search and /resync let `syncd search` and `syncd resync` work while the daemon holds
the embedded store, which allows one process. Requests are served in threads; anything touching the engine is
handed to the daemon's event loop, so the store is only ever used from that loop.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from syncd import metrics
from syncd.config import parse_listen
from syncd.errors import ConfigError

if TYPE_CHECKING:
    from syncd.daemon import Daemon

log = structlog.get_logger()


class HealthServer:
    def __init__(self, server: ThreadingHTTPServer) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, listen: str, daemon: Daemon) -> HealthServer:
        address = parse_listen(listen)
        handler = type("Handler", (_Handler,), {"daemon": daemon})
        try:
            server = ThreadingHTTPServer(address, handler)
        except OSError as e:
            raise ConfigError(f"server.listen: cannot listen on {listen}: {e.strerror}") from e
        log.info("http_listening", address=f"{address[0]}:{server.server_address[1]}")
        return cls(server)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    daemon: Daemon

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/livez":
            self._send(200, "text/plain", b"ok\n")
        elif url.path == "/readyz":
            ready = self.daemon.ready and self.daemon.healthy
            # A remote embedder retrying an outage has not failed the sync yet, but is down.
            ready = ready and getattr(self.daemon.engine.embedder, "failing_since", None) is None
            self._send(200 if ready else 503, "text/plain", b"ready\n" if ready else b"not ready\n")
        elif url.path == "/metrics":
            metrics.observe_state(self.daemon.engine.state, self.daemon.settings)
            self._send(200, CONTENT_TYPE_LATEST, generate_latest(metrics.REGISTRY))
        elif url.path == "/search":
            self._search(parse_qs(url.query))
        else:
            self._send(404, "text/plain", b"not found\n")

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/resync":
            self._send(404, "text/plain", b"not found\n")
            return
        names = parse_qs(url.query).get("source")
        future = asyncio.run_coroutine_threadsafe(self.daemon.resync(names), self.daemon.loop)
        report = future.result()
        self._send(200, "application/json", json.dumps(asdict(report)).encode())

    def _search(self, query: dict[str, list[str]]) -> None:
        try:
            text = query["q"][0]
            limit = int(query.get("limit", ["5"])[0])
        except (KeyError, ValueError):
            self._send(400, "application/json", b'{"error": "q and an integer limit"}')
            return
        source = query.get("source", [None])[0]
        future = asyncio.run_coroutine_threadsafe(
            self.daemon.engine.search(text, limit, source), self.daemon.loop
        )
        hits = future.result(timeout=60)
        body = [{"score": round(h.score, 4), **h.payload} for h in hits]
        self._send(200, "application/json", json.dumps({"query": text, "hits": body}).encode())

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None  # probes every few seconds would drown the log
