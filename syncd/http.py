"""The daemon's HTTP surface (/livez /readyz /metrics /search /document /resync /mcp) and
the client the CLI uses to ask a running daemon.

/search, /document and /resync let `syncd search`, `syncd mcp` and `syncd resync` work
while the daemon holds the embedded store, which allows one process. Requests are served in threads and talk to a
small `Service`; its coroutines run on the daemon's event loop, the only place that
touches the engine.

Safe to expose: with `server.token` every endpoint but /livez and /readyz wants
`Authorization: Bearer <token>`; a slow or idle client is cut off after
`REQUEST_TIMEOUT_SECONDS`; at most `MAX_CONNECTIONS` are served at once, the idlest
evicted first, so file descriptors stay free for documents and probes still answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.error import HTTPError
from urllib.parse import parse_qs, urlencode, urlsplit
from urllib.request import Request, urlopen

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from syncd import metrics
from syncd.config import ServerConfig, parse_listen
from syncd.errors import BackendUnavailable, ConfigError, SyncdError
from syncd.report import Report
from syncd.store import Hit, SearchQuery, parse_where

if TYPE_CHECKING:
    from syncd.daemon import McpOnDemand

log = structlog.get_logger()

T = TypeVar("T")

# A search waits this long for the loop (which may be busy with a batch) before a 503.
SEARCH_TIMEOUT_SECONDS = 60.0
# A client must send its request (and read the answer) within this; then it is cut off.
REQUEST_TIMEOUT_SECONDS = 10.0
# Connections served at once: well under a 1,024 descriptor limit, so documents open.
MAX_CONNECTIONS = 64
# Paths a prober may reach without the token.
OPEN_PATHS = ("/livez", "/readyz")
# An MCP request is one JSON-RPC message; nothing an agent sends comes near this.
MAX_MCP_BODY = 1 << 20


class Service(Protocol):
    """What the HTTP server needs of the daemon."""

    loop: asyncio.AbstractEventLoop

    def ready(self) -> bool: ...

    def source_names(self) -> list[str]: ...

    async def search(self, query: SearchQuery) -> list[Hit]: ...

    async def document(self, source: str, path: str) -> list[dict[str, Any]]: ...

    async def resync(
        self, names: list[str] | None = None, retry_failed: bool = True, allow_delete: bool = False
    ) -> Report: ...

    async def observe(self) -> None:
        """Refresh the metrics gauges that come from the state."""
        ...


def hits_json(query: str, hits: list[Hit]) -> dict[str, Any]:
    """The one shape of search results: `search --json` and GET /search."""
    return {"query": query, "hits": [h.to_json() for h in hits]}


def search_query(params: dict[str, list[str]]) -> SearchQuery:
    """GET /search's parameters; ValueError (ConfigError) names what is wrong."""
    if not params.get("q"):
        raise ValueError("parameter q is required")
    try:
        limit = int(params.get("limit", ["5"])[0])
    except ValueError:
        raise ValueError("limit must be an integer") from None
    return SearchQuery(
        text=params["q"][0],
        mode=params.get("mode", ["hybrid"])[0],
        limit=limit,
        source=params.get("source", [None])[0],
        path_glob=params.get("path", [None])[0],
        where=parse_where(params.get("where", [])),
    )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # A burst of connections waits in the kernel instead of being refused.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type, config: ServerConfig) -> None:
        super().__init__(address, handler)
        self.config = config
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        #: Connections that have not sent a whole request line yet, oldest first.
        self.idle: dict[socket.socket, float] = {}
        self.lock = threading.Lock()

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self._evict_idlest()
            if not self.slots.acquire(timeout=1.0):
                self.shutdown_request(request)
                return
        with self.lock:
            self.idle[request] = time.monotonic()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._done(request)
            raise

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done(request)

    def busy(self, request: socket.socket) -> None:
        with self.lock:
            self.idle.pop(request, None)

    def _done(self, request: socket.socket) -> None:
        self.busy(request)
        self.slots.release()

    def _evict_idlest(self) -> None:
        with self.lock:
            idlest = min(self.idle, key=self.idle.__getitem__, default=None)
            self.idle.pop(idlest, None)
        if idlest is not None:
            with contextlib.suppress(OSError):  # already gone
                idlest.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-answer is not worth a traceback in the log.
        log.debug("http_client_dropped", client=str(client_address))


class HealthServer:
    def __init__(self, server: _Server) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
        self._thread.start()

    @classmethod
    def start(
        cls, config: ServerConfig, service: Service, mcp: McpOnDemand | None = None
    ) -> HealthServer:
        address = parse_listen(config.listen)
        handler = type("Handler", (_Handler,), {"service": service, "mcp": mcp})
        try:
            server = _Server(address, handler, config)
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
    mcp: McpOnDemand | None
    server: _Server
    timeout = REQUEST_TIMEOUT_SECONDS
    # Headers and body leave in two writes; with Nagle the body waited ~40 ms for the
    # client's delayed ACK.
    disable_nagle_algorithm = True

    def parse_request(self) -> bool:
        self.server.busy(self.connection)
        return super().parse_request()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if not self._allowed(url.path):
            return
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
        elif url.path == "/document":
            self._document(parse_qs(url.query))
        elif url.path == "/mcp":
            self._mcp()
        else:
            self._error(404, f"no such endpoint: {url.path}")

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if not self._allowed(url.path):
            return
        if url.path == "/mcp":
            self._mcp()
            return
        if url.path != "/resync":
            self._error(404, f"no such endpoint: {url.path}")
            return
        params = parse_qs(url.query)
        names = params.get("source")
        allow_delete = params.get("allow_delete", ["0"])[-1].lower() in ("1", "true", "yes")
        unknown = sorted(set(names or []) - set(self.service.source_names()))
        if unknown:
            self._error(404, f"no source named {unknown[0]!r}")
            return
        report = self._on_loop(self.service.resync(names, allow_delete=allow_delete), timeout=None)
        self._send(200, "application/json", json.dumps(asdict(report)).encode())

    def do_DELETE(self) -> None:
        url = urlsplit(self.path)
        if self._allowed(url.path):
            if url.path == "/mcp":
                self._mcp()
            else:
                self._error(404, f"no such endpoint: {url.path}")

    def _allowed(self, path: str) -> bool:
        token = self.server.config.bearer_token()
        if token is None or path in OPEN_PATHS:
            return True
        sent = self.headers.get("Authorization", "")
        if hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            return True
        self._error(401, "a valid bearer token is required (server.token)")
        return False

    def _search(self, params: dict[str, list[str]]) -> None:
        try:
            query = search_query(params)
        except (ValueError, ConfigError) as e:
            self._error(400, str(e))
            return
        hits = self._answer(self.service.search(query))
        if hits is not None:
            self._send(200, "application/json", json.dumps(hits_json(query.text, hits)).encode())

    def _document(self, params: dict[str, list[str]]) -> None:
        source, path = params.get("source", [None])[0], params.get("path", [None])[0]
        if not source or not path:
            self._error(400, "parameters source and path are required")
        elif source not in self.service.source_names():
            self._error(404, f"no source named {source!r}")
        elif (chunks := self._answer(self.service.document(source, path))) is not None:
            body = {"source": source, "path": path, "chunks": chunks}
            self._send(200, "application/json", json.dumps(body).encode())

    def _mcp(self) -> None:
        if self.mcp is None:
            self._error(404, "no such endpoint: /mcp")
            return
        length = self.headers.get("Content-Length", "0")
        if not length.isdigit() or int(length) > MAX_MCP_BODY:
            self._error(413, f"an MCP request has a Content-Length of at most {MAX_MCP_BODY}")
            return
        body = self.rfile.read(int(length))
        answer = self._answer(
            self.mcp.handle(self.command, self.path, list(self.headers.items()), body)
        )
        if answer is None:
            return
        self.send_response(answer.status)
        for name, value in answer.headers:
            if name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)

    def _answer(self, work: Coroutine[Any, Any, T]) -> T | None:
        """The result of a read on the daemon's loop, or None once a 503 has been sent."""
        try:
            return self._on_loop(work, SEARCH_TIMEOUT_SECONDS)
        except FutureTimeout:
            self._error(503, "the daemon is busy; try again")
        except SyncdError as e:
            self._error(503, str(e))
        return None

    def _on_loop(self, work: Coroutine[Any, Any, T], timeout: float | None) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.service.loop).result(timeout)

    def _error(self, status: int, message: str) -> None:
        self._send(status, "application/json", json.dumps({"error": message}).encode())

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None  # probes every few seconds would drown the log


class DaemonClient:
    """Asks the daemon at `server.listen` to do what needs the store it holds."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        host, port = parse_listen(config.listen)
        host = f"[{host}]" if ":" in host else host
        self.base = f"http://{host}:{port}"

    def resync(self, source: str | None, allow_delete: bool = False) -> Report:
        params = {"source": source, "allow_delete": 1 if allow_delete else None}
        return Report.from_dict(self._ask("/resync", params, method="POST"))

    def search(self, query: SearchQuery) -> dict[str, Any]:
        params = {
            "q": query.text,
            "limit": query.limit,
            "mode": query.mode,
            "source": query.source,
            "path": query.path_glob,
            "where": [f"{k}={v}" for k, v in query.where.items()],
        }
        return self._ask("/search", params)

    def document(self, source: str, path: str) -> list[dict[str, Any]]:
        """The payloads of the document's points in chunk order; [] if it has none."""
        return self._ask("/document", {"source": source, "path": path})["chunks"]

    def _ask(self, path: str, params: dict[str, Any], method: str = "GET") -> dict[str, Any]:
        query = urlencode({k: v for k, v in params.items() if v is not None}, doseq=True)
        request = Request(f"{self.base}{path}?{query}", method=method)
        token = self.config.bearer_token()
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urlopen(request, timeout=3600) as response:
                return json.load(response)
        except HTTPError as e:
            message = _error_message(e)
            if e.code in (400, 404):
                raise ConfigError(f"the daemon at {self.config.listen} says: {message}") from e
            raise BackendUnavailable(
                f"the daemon at {self.config.listen} answered {e.code}: {message}"
            ) from e
        except OSError as e:
            raise BackendUnavailable(
                f"the embedded store is held by another process, and no syncd daemon answers "
                f"at server.listen {self.config.listen} ({e})"
            ) from e


def _error_message(e: HTTPError) -> str:
    try:
        return json.load(e)["error"]
    except (ValueError, KeyError, TypeError, OSError):
        return e.reason
