"""The daemon's HTTP surface (/livez /readyz /metrics /search /resync) and the client the
CLI uses to ask a running daemon.

/search and /resync let `syncd search` and `syncd resync` work while the daemon holds the
embedded store, which allows one process. Requests are served in threads and talk to a
small `Service`; its coroutines run on the daemon's event loop, the only place that
touches the engine.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit
from urllib.request import Request, urlopen

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from syncd import metrics
from syncd.config import Server as ServerConfig
from syncd.config import parse_listen
from syncd.engine import Report
from syncd.errors import BackendUnavailable, ConfigError
from syncd.store import Hit

log = structlog.get_logger()

T = TypeVar("T")

# A search waits this long for the loop (which may be busy with a batch) before a 503.
SEARCH_TIMEOUT_SECONDS = 60.0


class Service(Protocol):
    """What the HTTP server needs of the daemon."""

    loop: asyncio.AbstractEventLoop

    def ready(self) -> bool: ...

    async def search(self, text: str, limit: int, source: str | None) -> list[Hit]: ...

    async def resync(self, names: list[str] | None = None) -> Report: ...

    async def observe(self) -> None:
        """Refresh the metrics gauges that come from the state."""
        ...


def hits_json(query: str, hits: list[Hit]) -> dict[str, Any]:
    """The one shape of search results: `search --json` and GET /search."""
    return {"query": query, "hits": [{"score": round(h.score, 4), **h.payload} for h in hits]}


class HealthServer:
    def __init__(self, server: ThreadingHTTPServer) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, config: ServerConfig, service: Service) -> HealthServer:
        address = parse_listen(config.listen)
        handler = type("Handler", (_Handler,), {"service": service})
        try:
            server = ThreadingHTTPServer(address, handler)
        except OSError as e:
            raise ConfigError(
                f"server.listen: cannot listen on {config.listen}: {e.strerror}"
            ) from e
        log.info("http_listening", address=f"{address[0]}:{server.server_address[1]}")
        return cls(server)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    service: Service

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/livez":
            self._send(200, "text/plain", b"ok\n")
        elif url.path == "/readyz":
            ready = self.service.ready()
            self._send(200 if ready else 503, "text/plain", b"ready\n" if ready else b"not ready\n")
        elif url.path == "/metrics":
            self._on_loop(self.service.observe(), timeout=10)
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
        report = self._on_loop(self.service.resync(names), timeout=None)
        self._send(200, "application/json", json.dumps(asdict(report)).encode())

    def _search(self, query: dict[str, list[str]]) -> None:
        try:
            text = query["q"][0]
            limit = int(query.get("limit", ["5"])[0])
        except (KeyError, ValueError):
            self._send(400, "application/json", b'{"error": "q and an integer limit"}')
            return
        source = query.get("source", [None])[0]
        hits = self._on_loop(self.service.search(text, limit, source), SEARCH_TIMEOUT_SECONDS)
        self._send(200, "application/json", json.dumps(hits_json(text, hits)).encode())

    def _on_loop(self, work: Coroutine[Any, Any, T], timeout: float | None) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.service.loop).result(timeout)

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None  # probes every few seconds would drown the log


class DaemonClient:
    """Asks the daemon at `server.listen` to do what needs the store it holds."""

    def __init__(self, config: ServerConfig) -> None:
        self.listen = config.listen
        host, port = parse_listen(config.listen)
        host = f"[{host}]" if ":" in host else host
        self.base = f"http://{host}:{port}"

    def resync(self, source: str | None) -> Report:
        return Report.from_dict(
            self._ask(Request(self._url("/resync", source=source), method="POST"))
        )

    def search(self, text: str, limit: int, source: str | None) -> dict[str, Any]:
        return self._ask(self._url("/search", q=text, limit=limit, source=source))

    def _url(self, path: str, **params: Any) -> str:
        query = urlencode({k: v for k, v in params.items() if v is not None})
        return f"{self.base}{path}?{query}"

    def _ask(self, request: Request | str) -> dict[str, Any]:
        try:
            with urlopen(request, timeout=3600) as response:
                return json.load(response)
        except OSError as e:
            raise BackendUnavailable(
                f"the embedded store is held by another process, and no syncd daemon answers "
                f"at server.listen {self.listen} ({e})"
            ) from e
