"""The MCP tools through the SDK's own clients: `syncd mcp` on stdio, and the daemon's /mcp."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from daemon_process import Daemon, free_port, get
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

SAMPLE_DOCS = Path(__file__).parent.parent / "sample-docs"
SOURDOUGH = "how do I feed a sourdough starter"
TOKEN = "mcp-test-token"

T = TypeVar("T")


@pytest.fixture
def sample(docs: Path) -> Path:
    shutil.copytree(SAMPLE_DOCS, docs, dirs_exist_ok=True)
    return docs


@asynccontextmanager
async def stdio(config: Path) -> AsyncIterator[ClientSession]:
    # The SDK passes a child only a few safe variables; the worktree must stay importable.
    env = {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "syncd", "mcp", "-c", str(config)], env=env
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


@asynccontextmanager
async def http(url: str, token: str | None = TOKEN) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with (
        create_mcp_http_client(headers=headers) as client,
        streamable_http_client(url, http_client=client) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def run(session: Callable[[], Any], body: Callable[[ClientSession], Awaitable[T]]) -> T:
    async def go() -> T:
        async with session() as s:
            return await body(s)

    return asyncio.run(go())


async def call(session: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await session.call_tool(tool, arguments)
    assert not result.is_error, result.content
    return result.structured_content


async def error(session: ClientSession, tool: str, **arguments: Any) -> str:
    result = await session.call_tool(tool, arguments)
    assert result.is_error
    return result.content[0].text


async def read_everything(session: ClientSession) -> dict[str, Any]:
    tools = {t.name: t for t in (await session.list_tools()).tools}
    found = await call(session, "search", query=SOURDOUGH, limit=3)
    top = found["hits"][0]
    doc = await call(session, "get_document", source=top["source"], path=top["path"])
    first = await call(session, "get_document", source="docs", path=top["path"], max_chunks=1)
    rest = await call(
        session, "get_document", source="docs", path=top["path"], first_chunk=first["next_chunk"]
    )
    sources = await call(session, "list_sources")
    return {"tools": tools, "hits": found["hits"], "doc": doc, "pages": [first, rest], **sources}


def check_everything(seen: dict[str, Any]) -> None:
    tools = seen["tools"]
    assert set(tools) == {"search", "get_document", "list_sources"}
    schema = tools["search"].input_schema["properties"]
    assert schema["limit"]["minimum"] == 1 and schema["limit"]["maximum"] == 100
    assert schema["mode"]["enum"] == ["hybrid", "dense", "keyword"]
    assert all(schema[k]["description"] for k in ("query", "limit", "mode", "source", "path"))
    assert tools["search"].description and tools["search"].annotations.read_only_hint

    top = seen["hits"][0]
    assert top["path"] == "kitchen/sourdough.md"
    assert {"score", "source", "chunk_index", "page", "title", "text"} <= set(top)
    assert top["title"] == "Sourdough bread for beginners"

    doc = seen["doc"]
    assert doc["path"] == "kitchen/sourdough.md" and doc["format"] == "text/markdown"
    assert doc["metadata"]["tags"] == ["baking", "bread"]
    indexes = [c["chunk_index"] for c in doc["chunks"]]
    assert indexes == list(range(doc["chunk_count"])) and len(indexes) > 1
    assert doc["next_chunk"] is None
    first, rest = seen["pages"]
    assert [c["chunk_index"] for c in first["chunks"]] == [0] and first["next_chunk"] == 1
    assert first["chunks"] + rest["chunks"] == doc["chunks"]

    (row,) = seen["sources"]
    assert row["name"] == "docs" and row["type"] == "folder"
    assert row["documents"] == 32 and row["pending"] == 0 and row["failed"] == []
    assert row["chunks"] >= row["documents"]
    assert row["last_sync"]


async def bad_arguments(session: ClientSession) -> list[str]:
    return [
        await error(session, "search", query="bread", limit=0),
        await error(session, "search", query="bread", mode="nope"),
        await error(session, "search", query="bread", source="nope"),
        await error(session, "search", query="bread", where={"a b": "c"}),
        await error(session, "get_document", source="docs", path="no/such.md"),
        # The session still answers after all of them.
        (await call(session, "search", query="bread", limit=1))["hits"][0]["path"],
    ]


def check_bad_arguments(messages: list[str]) -> None:
    limit, mode, source, where, missing, after = messages
    assert "limit" in limit and "greater than or equal to 1" in limit
    assert "mode" in mode and "'hybrid', 'dense' or 'keyword'" in mode
    assert "no source named 'nope'; the sources are: docs" in source
    assert "keys are letters, digits" in where
    assert "no document 'no/such.md' in source 'docs'" in missing
    assert after == "kitchen/sourdough.md"


def test_stdio_server_searches_reads_and_lists_the_store(sample, settings, resync):
    resync(settings)
    check_everything(run(lambda: stdio(sample.parent / "config.yaml"), read_everything))


def test_stdio_bad_arguments_are_tool_errors_not_crashes(sample, settings, resync):
    resync(settings)
    check_bad_arguments(run(lambda: stdio(sample.parent / "config.yaml"), bad_arguments))


def guarded_daemon(make_daemon) -> Daemon:
    """A daemon on a free port whose every endpoint but the probes wants TOKEN."""
    port = free_port()
    daemon = make_daemon(server={"listen": f"127.0.0.1:{port}", "token": TOKEN})
    daemon.port = port
    return daemon.start()


def test_stdio_server_asks_the_daemon_that_holds_the_store(sample, make_daemon):
    daemon = guarded_daemon(make_daemon)
    daemon.wait_ready()

    async def search_and_read(session: ClientSession) -> tuple[str, int]:
        (top, *_) = (await call(session, "search", query=SOURDOUGH))["hits"]
        doc = await call(session, "get_document", source="docs", path=top["path"])
        return top["path"], len(doc["chunks"])

    path, chunks = run(lambda: stdio(daemon.config), search_and_read)
    assert path == "kitchen/sourdough.md" and chunks > 1
    assert daemon.stop() == 0


def test_daemon_serves_the_tools_at_mcp(sample, make_daemon):
    daemon = guarded_daemon(make_daemon)
    daemon.wait_ready()
    url = daemon.url("/mcp")
    check_everything(run(lambda: http(url), read_everything))
    check_bad_arguments(run(lambda: http(url), bad_arguments))
    assert daemon.stop() == 0


def test_the_daemon_loads_the_mcp_sdk_at_the_first_request_to_mcp(sample, make_daemon):
    daemon = guarded_daemon(make_daemon)
    daemon.wait_ready()

    def sdk_loaded() -> bool:  # pydantic's native core comes with the SDK
        return "pydantic_core" in Path(f"/proc/{daemon.proc.pid}/maps").read_text()

    assert not sdk_loaded()
    row = run(lambda: http(daemon.url("/mcp")), lambda s: call(s, "list_sources"))
    assert row["sources"][0]["name"] == "docs"
    assert sdk_loaded()
    assert daemon.stop() == 0


def test_mcp_without_the_token_is_401(sample, make_daemon):
    daemon = guarded_daemon(make_daemon)
    daemon.wait_ready()
    listing = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode()
    for token in (None, "wrong"):
        request = urllib.request.Request(daemon.url("/mcp"), data=listing, method="POST")
        request.add_header("Content-Type", "application/json")
        request.add_header("Accept", "application/json, text/event-stream")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401
        assert refused.value.headers["WWW-Authenticate"] == "Bearer"
        refused.value.close()
    assert get(daemon.url("/livez"))[0] == 200
    assert daemon.stop() == 0


def test_daemon_keeps_syncing_while_an_agent_queries(sample, make_daemon):
    daemon = guarded_daemon(make_daemon)
    daemon.wait_ready()

    async def query_until_it_appears(session: ClientSession) -> int:
        (sample / "notes" / "penguins.md").write_text(
            "# Penguins\n\nEmperor penguins breed on the sea ice of Antarctica in winter.\n"
        )
        for queries in range(1, 600):
            hits = (await call(session, "search", query="emperor penguins sea ice", limit=1))[
                "hits"
            ]
            if hits and hits[0]["path"] == "notes/penguins.md":
                return queries
            await asyncio.sleep(0.05)
        raise AssertionError("the new file never appeared")

    queries = run(lambda: http(daemon.url("/mcp")), query_until_it_appears)
    assert queries >= 1
    row = run(lambda: http(daemon.url("/mcp")), lambda s: call(s, "list_sources"))["sources"][0]
    assert row["documents"] == 33
    assert daemon.stop() == 0
