"""`python -m bench.mcp`: a search's round trip over each way an agent reaches syncd.

The sample folder, the local model; medians of `queries` calls after one warm-up call:
`syncd mcp` on stdio opening the store itself, the same beside a daemon (it asks the
daemon over HTTP), the daemon's /mcp (streamable HTTP), and plain GET /search to compare.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from bench.harness import daemon, free_port, http_json, settings, sync
from syncd.config import LogConfig
from syncd.logs import configure_logging

SAMPLE_DOCS = Path(__file__).resolve().parent.parent / "sample-docs"
QUERY = "how do I feed a sourdough starter"


async def _timed(call: Callable[[], Awaitable[Any]], queries: int) -> float:
    """Median milliseconds of `queries` calls after a warm-up."""
    await call()
    took = []
    for _ in range(queries):
        started = time.perf_counter()
        await call()
        took.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(took), 1)


async def _session_search(session: ClientSession, queries: int) -> float:
    await session.initialize()

    async def search() -> None:
        result = await session.call_tool("search", {"query": QUERY, "limit": 5})
        assert not result.is_error and result.structured_content["hits"], result.content

    return await _timed(search, queries)


async def _stdio(config: Path, queries: int) -> float:
    env = {"PYTHONPATH": os.pathsep.join(sys.path)}
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "syncd", "mcp", "-c", str(config)], env=env
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        return await _session_search(session, queries)


async def _http(url: str, queries: int) -> float:
    async with (
        streamable_http_client(url) as (read, write),
        ClientSession(read, write) as session,
    ):
        return await _session_search(session, queries)


async def _plain(url: str, queries: int) -> float:
    async def search() -> None:
        assert (await asyncio.to_thread(http_json, url))["hits"]

    return await _timed(search, queries)


def mcp_roundtrip(work: Path, queries: int = 20) -> dict[str, Any]:
    shutil.copytree(SAMPLE_DOCS, work / "docs")
    port = free_port()
    sync(settings(work, server={"listen": ""}))
    stdio = asyncio.run(_stdio(work / "config.yaml", queries))
    result = {"queries": queries, "stdio_store_ms": stdio}
    settings(work, server={"listen": f"127.0.0.1:{port}"})
    with daemon(work / "config.yaml", port):
        base = f"http://127.0.0.1:{port}"
        result["stdio_via_daemon_ms"] = asyncio.run(_stdio(work / "config.yaml", queries))
        result["http_mcp_ms"] = asyncio.run(_http(f"{base}/mcp", queries))
        search = f"{base}/search?q={urllib.parse.quote(QUERY)}&limit=5"
        result["http_search_ms"] = asyncio.run(_plain(search, queries))
    return result


if __name__ == "__main__":
    configure_logging(LogConfig(level="warning"))
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(mcp_roundtrip(Path(tmp)), indent=2))
