"""The MCP tools (search, get_document, list_sources), on stdio (`syncd mcp`) and at /mcp.

The tools read through an `Index`: the daemon itself when it serves /mcp, or, for
`syncd mcp`, the embedded store (let go when idle, so an agent never keeps `syncd run`
from starting for long) or the daemon's HTTP API whenever the daemon holds it.

/mcp is the SDK's streamable HTTP app in stateless JSON mode, so each POST is one
self-contained exchange; `Endpoint` hands it one request already read by the daemon's
threaded HTTP server and runs it on the daemon's loop, where the session manager lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Protocol, TypeVar

import structlog
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from syncd import __version__
from syncd.config import Settings
from syncd.embedders import Embedder, make_embedder
from syncd.engine import Engine, opened
from syncd.errors import StoreLocked, SyncdError
from syncd.http import DaemonClient
from syncd.sources import source_status
from syncd.state import State
from syncd.store import MAX_LIMIT, Hit, Mode, SearchQuery
from syncd.switch import active_embedder

log = structlog.get_logger()

T = TypeVar("T")

# `syncd mcp` lets go of the embedded store after this long without a call.
IDLE_SECONDS = 10.0
# Chunks get_document returns at most per call; an agent pages on with `first_chunk`.
MAX_CHUNKS = 200

INSTRUCTIONS = """\
syncd mirrors folders of documents (and queues of texts) into a search index.
Use `search` to find passages, then `get_document` with a hit's source and path to read
the whole document in order. `list_sources` names the sources and how current they are."""

_READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)


class Index(Protocol):
    """Where the tools read: the daemon (`syncd.daemon.Daemon`) or an `Engine`."""

    async def search(self, query: SearchQuery) -> list[Hit]: ...

    async def document(self, source: str, path: str) -> list[dict[str, Any]]:
        """The payloads of the document's points, in chunk order; [] if there is none."""
        ...

    async def sources(self) -> list[dict[str, Any]]:
        """`syncd.sources.source_status` of every configured source."""
        ...


def build(index: Index, source_names: list[str]) -> MCPServer:
    """The MCP server with syncd's three read-only tools over `index`."""
    # WARNING: the SDK's INFO lines (one per request) would drown the daemon's own log.
    server = MCPServer("syncd", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING")

    def check_source(source: str | None) -> None:
        if source is not None and source not in source_names:
            raise ToolError(
                f"no source named {source!r}; the sources are: {', '.join(source_names)}"
            )

    @server.tool(annotations=_READ_ONLY)
    async def search(
        query: Annotated[
            str, Field(min_length=1, description="What to look for: a question or keywords.")
        ],
        limit: Annotated[
            int, Field(ge=1, le=MAX_LIMIT, description="How many passages to return.")
        ] = 5,
        mode: Annotated[
            Mode,
            Field(
                description="hybrid: meaning and exact words fused (best by default); "
                "dense: meaning only; keyword: exact words only (BM25), for names and codes."
            ),
        ] = "hybrid",
        source: Annotated[
            str | None, Field(description="Only this source (names from list_sources).")
        ] = None,
        path: Annotated[
            str | None,
            Field(
                description="Only documents whose path matches this glob, e.g. 'kitchen/**' "
                "or '*.pdf' (a pattern without '/' matches the file name at any depth)."
            ),
        ] = None,
        where: Annotated[
            dict[str, str] | None,
            Field(description="Only documents whose metadata (front-matter) has these values."),
        ] = None,
    ) -> dict[str, Any]:
        """Find the passages (chunks) of the synced documents that best match a query.

        Each hit has its score, source, path, chunk_index (0-based) of chunk_count, page
        (paged formats), title and text. Read a whole document with get_document.
        """
        check_source(source)
        with _as_tool_error():
            q = SearchQuery(
                query, mode=mode, limit=limit, source=source, path_glob=path, where=where or {}
            )
            hits = await index.search(q)
        return {"query": query, "hits": [h.to_json() for h in hits]}

    @server.tool(annotations=_READ_ONLY)
    async def get_document(
        source: Annotated[str, Field(description="The document's source, as in a search hit.")],
        path: Annotated[str, Field(description="The document's path, as in a search hit.")],
        first_chunk: Annotated[
            int, Field(ge=0, description="Start at this chunk_index (to page on).")
        ] = 0,
        max_chunks: Annotated[
            int, Field(ge=1, le=MAX_CHUNKS, description="Return at most this many chunks.")
        ] = MAX_CHUNKS,
    ) -> dict[str, Any]:
        """Read one synced document: its metadata and its chunks in order.

        Chunks overlap slightly (each repeats the end of the one before). When the
        document has more chunks than returned, `next_chunk` is the first_chunk to ask for.
        """
        check_source(source)
        with _as_tool_error():
            payloads = await index.document(source, path)
        if not payloads:
            raise ToolError(f"no document {path!r} in source {source!r}; search returns the paths")
        return document_json(payloads, first_chunk, max_chunks)

    @server.tool(annotations=_READ_ONLY)
    async def list_sources() -> dict[str, Any]:
        """The configured sources: name, type (folder or redis), documents, chunks,
        pending (waiting to be synced), failed (path and reason), skipped and last_sync."""
        with _as_tool_error():
            return {"sources": await index.sources()}

    return server


def document_json(payloads: list[dict[str, Any]], first: int, most: int) -> dict[str, Any]:
    """A document's metadata (from its first chunk) and a page of its chunks."""
    head = payloads[0]
    page = [p for p in payloads if p.get("chunk_index", 0) >= first][:most]
    last = page[-1].get("chunk_index", 0) if page else first - 1
    more = any(p.get("chunk_index", 0) > last for p in payloads)
    return {
        "source": head.get("source"),
        "path": head.get("path"),
        "title": head.get("title"),
        "format": head.get("format"),
        "metadata": head.get("metadata") or {},
        "mtime": head.get("mtime"),
        "doc_hash": head.get("doc_hash"),
        "chunk_count": head.get("chunk_count", len(payloads)),
        "chunks": [
            {"chunk_index": p.get("chunk_index"), "page": p.get("page"), "text": p.get("text")}
            for p in page
        ],
        "next_chunk": last + 1 if more else None,
    }


@contextlib.contextmanager
def _as_tool_error():
    """syncd's errors are the agent's to read (a bad filter, the daemon busy), not crashes."""
    try:
        yield
    except SyncdError as e:
        raise ToolError(f"{e} ({e.hint})" if e.hint else str(e)) from e


# -- syncd mcp (stdio) ---------------------------------------------------------------------


class _Direct:
    """`syncd mcp`'s index: the store itself, or the daemon's HTTP API while it holds it.

    The store stays open while calls keep coming (opening and flushing it costs ~0.2 s)
    and is let go after IDLE_SECONDS, so an idle agent does not keep `syncd run` waiting.
    """

    def __init__(self, settings: Settings, embedder: Embedder) -> None:
        self.settings = settings
        self.embedder = embedder
        self._lock = asyncio.Lock()
        self._held: contextlib.AsyncExitStack | None = None
        self._engine: Engine | None = None
        self._releaser: asyncio.Future[None] | None = None
        self._in_use = 0
        self._last_use = 0.0
        #: Until then the daemon is known to hold the store: ask it without trying.
        self._daemon_until = 0.0

    async def search(self, query: SearchQuery) -> list[Hit]:
        async def remote(client: DaemonClient) -> list[Hit]:
            hits = (await asyncio.to_thread(client.search, query))["hits"]
            # A hit's JSON carries every payload field that Hit.to_json reads.
            return [Hit(h["score"], h) for h in hits]

        return await self._either(lambda engine: engine.search(query), remote)

    async def document(self, source: str, path: str) -> list[dict[str, Any]]:
        async def remote(client: DaemonClient) -> list[dict[str, Any]]:
            return await asyncio.to_thread(client.document, source, path)

        return await self._either(lambda engine: engine.document(source, path), remote)

    async def sources(self) -> list[dict[str, Any]]:
        # SQLite only, as `syncd status`: it works beside the daemon.
        state = State(self.settings.state.path)
        try:
            return [await source_status(state, s) for s in self.settings.sources]
        finally:
            state.close()

    async def _either(
        self,
        local: Callable[[Engine], Awaitable[T]],
        remote: Callable[[DaemonClient], Awaitable[T]],
    ) -> T:
        engine = None
        if time.monotonic() >= self._daemon_until:
            try:
                engine = await self._open()
            except StoreLocked:
                if not self.settings.server.listen:
                    raise
                self._daemon_until = time.monotonic() + IDLE_SECONDS
        if engine is None:
            return await remote(DaemonClient(self.settings.server))
        self._in_use += 1
        try:
            return await local(engine)
        finally:
            self._in_use -= 1
            self._last_use = time.monotonic()

    async def _open(self) -> Engine:
        async with self._lock:
            if self._engine is None:
                held = contextlib.AsyncExitStack()
                self._engine = await held.enter_async_context(
                    opened(self.settings, create=False, embedder=self.embedder)
                )
                self._held = held
                self._releaser = asyncio.ensure_future(self._release_when_idle())
            return self._engine

    async def _release_when_idle(self) -> None:
        while self._held is not None:
            await asyncio.sleep(IDLE_SECONDS)
            async with self._lock:
                if not self._in_use and time.monotonic() - self._last_use >= IDLE_SECONDS:
                    await self._let_go()

    async def close(self) -> None:
        async with self._lock:
            await self._let_go()

    async def _let_go(self) -> None:
        """Under the lock, so a new call cannot open the store before it is closed."""
        held, self._held, self._engine = self._held, None, None
        if held is not None:
            await held.aclose()


async def serve_stdio(settings: Settings) -> None:
    """`syncd mcp`: serve the tools on stdin/stdout until the client closes them."""
    state = State(settings.state.path)
    try:
        config = active_embedder(settings, state)
    finally:
        state.close()
    embedder = make_embedder(config)
    await embedder.start()
    index = _Direct(settings, embedder)
    try:
        server = build(index, [s.name for s in settings.sources])
        await server.run_stdio_async()
    finally:
        await index.close()
        await embedder.aclose()


# -- /mcp on the daemon's port ---------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class Endpoint:
    """The SDK's ASGI app, called with one whole HTTP request at a time."""

    def __init__(self, server: MCPServer, host: str) -> None:
        # `host` decides the SDK's DNS-rebinding check: on for a loopback listener.
        self.app = server.streamable_http_app(stateless_http=True, json_response=True, host=host)
        self.manager = server.session_manager

    async def handle(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> Response:
        path, _, query = target.partition("?")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            "client": None,
            "server": None,
        }
        answered = asyncio.Event()
        received = False
        status, out_headers, chunks = 500, [], []

        async def receive() -> dict[str, Any]:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": body, "more_body": False}
            # The body was whole; the client "leaves" only once its answer is written.
            await answered.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, out_headers
            if message["type"] == "http.response.start":
                status = message["status"]
                out_headers = [
                    (k.decode("latin-1"), v.decode("latin-1")) for k, v in message["headers"]
                ]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    answered.set()

        try:
            await self.app(scope, receive, send)
        finally:
            answered.set()
        return Response(status, out_headers, b"".join(chunks))


@contextlib.asynccontextmanager
async def serving(index: Index, source_names: list[str], host: str) -> AsyncIterator[Endpoint]:
    """/mcp for the daemon's lifetime: the SDK's session manager runs on this loop."""
    endpoint = Endpoint(build(index, source_names), host)
    async with endpoint.manager.run():
        yield endpoint
