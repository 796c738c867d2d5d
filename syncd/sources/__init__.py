"""Where documents come from (folders: scan and watch; Redis streams), and how far each
source has got: `source_status`, the one row `syncd status` and MCP's list_sources show."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from syncd.config import FolderSource, RedisSource
from syncd.state import State


async def source_status(state: State, source: FolderSource | RedisSource) -> dict[str, Any]:
    """Documents, chunks, pending, failures and last sync from SQLite; a queue's stream too."""
    row = state_status(state, source)
    if isinstance(source, RedisSource):
        row["stream"] = await stream_status(source)
    return row


def state_status(state: State, source: FolderSource | RedisSource) -> dict[str, Any]:
    """The part of `source_status` SQLite knows: all of it for a folder."""
    r = state.status(source.name)
    return {
        "name": r.name,
        "type": source.type,
        "documents": r.documents,
        "chunks": r.chunks,
        "pending": r.pending,
        "skipped": r.skipped,
        "last_sync": _iso(r.last_sync),
        "failed": [{"path": f.path, "reason": f.error, "attempts": f.attempts} for f in r.failed],
        "unlisted": [{"path": p or ".", "error": e} for p, e in r.unlisted.items()],
        "held_deletions": r.held_deletions,
    }


async def stream_status(source: RedisSource) -> dict[str, Any]:
    from syncd.sources.redis_stream import RedisStream  # only queue sources need Redis

    stream = RedisStream(source)
    try:
        return asdict(await stream.status())
    finally:
        await stream.close()


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None
