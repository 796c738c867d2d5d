"""Documents as events on a Redis Stream, read with a consumer group (all Redis code is here).

Entries carry `op` (upsert | delete), `id` (becomes `path`), `text` and optional
`metadata` (a JSON object). An entry is acknowledged only once its result is durable in
Qdrant and SQLite, so delivery is at-least-once; entries left pending by a dead consumer
(or by a failed try) are reclaimed after `claim_idle_seconds`; an entry that is malformed,
or has been delivered `max_deliveries` times, is copied with its reason to `<stream>:dead`
and acknowledged.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from syncd.config import RedisSource
from syncd.errors import BackendUnavailable, DocumentError, SourceError
from syncd.metadata import json_safe

log = structlog.get_logger()


@dataclass(frozen=True)
class Entry:
    id: str
    fields: dict[str, str]
    deliveries: int


@dataclass(frozen=True)
class Parsed:
    """A well-formed entry: `text` is None for a delete."""

    entry: Entry
    doc_id: str
    text: str | None
    metadata: dict[str, Any]


@dataclass(frozen=True)
class StreamStatus:
    lag: int | None
    pending: int
    dead: int


def entry_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


# Bounds on what one entry may carry; larger ones are dead-lettered, not applied.
MAX_TEXT_CHARS = 20_000_000
MAX_METADATA_CHARS = 65_536


def parse(entry: Entry) -> Parsed:
    """Raise ValueError with the reason for a malformed entry."""
    f = entry.fields
    for name, value in f.items():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"field {_utf8(name)!r} is not valid UTF-8") from None
    op, doc_id = f.get("op"), f.get("id")
    if op not in ("upsert", "delete"):
        raise ValueError(f"op must be 'upsert' or 'delete', got {op!r}")
    if not doc_id:
        raise ValueError("missing field 'id'")
    if op == "delete":
        return Parsed(entry, doc_id, None, {})
    if "text" not in f:
        raise ValueError("upsert without field 'text'")
    if len(f["text"]) > MAX_TEXT_CHARS:
        raise ValueError(f"text longer than {MAX_TEXT_CHARS} characters")
    return Parsed(entry, doc_id, f["text"], _metadata(f.get("metadata")))


def _metadata(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    if len(raw) > MAX_METADATA_CHARS:
        raise ValueError(f"metadata longer than {MAX_METADATA_CHARS} characters")
    try:
        metadata = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("metadata is nested too deeply") from None
    except ValueError as e:
        raise ValueError(f"metadata is not JSON: {e}") from None
    if not isinstance(metadata, dict):
        raise ValueError("metadata must be a JSON object")
    try:
        return json_safe(metadata)  # bounded depth and size, as front matter is
    except DocumentError as e:
        raise ValueError(str(e)) from None


def _no_constant(name: str) -> float:
    raise ValueError(f"metadata holds {name}, which is not JSON (no NaN or Infinity)")


def _utf8(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class RedisStream:
    def __init__(self, source: RedisSource) -> None:
        self.source = source
        self.dead_stream = f"{source.stream}:dead"
        self.consumer = source.consumer or f"{socket.gethostname()}-{os.getpid()}"
        # Invalid UTF-8 in an entry must fail that entry, not the read: such bytes come
        # through as lone surrogates, which `parse` rejects and `dead_letter` writes back.
        self._redis = redis.Redis.from_url(
            source.url,
            decode_responses=True,
            encoding_errors="surrogateescape",
            socket_timeout=30,
            socket_connect_timeout=5,
        )
        self._group_ready = False
        self._claim_cursor = "0-0"

    async def close(self) -> None:
        await self._redis.aclose()

    async def read(self, block_ms: int | None, reclaim: bool = True) -> list[Entry]:
        """Reclaimed entries first (stale pending ones), else new ones; at most `batch`.
        Waits up to `block_ms` for new ones (None: not at all). Without `reclaim` only new
        ones: entries this consumer still holds would otherwise come back while in flight."""
        async with _translated(self):
            await self._ensure_group()
            entries = await self._reclaim() if reclaim else []
            if entries:
                return entries
            reply = await self._redis.xreadgroup(
                self.source.group,
                self.consumer,
                {self.source.stream: ">"},
                count=self.source.batch,
                block=block_ms,
            )
        return [Entry(i, f, 1) for _, items in reply or [] for i, f in items]

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self._redis.xgroup_create(
                self.source.stream, self.source.group, id=self.source.start, mkstream=True
            )
            log.info("consumer_group_created", stream=self.source.stream, group=self.source.group)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._group_ready = True

    async def _reclaim(self) -> list[Entry]:
        idle_ms = int(self.source.claim_idle_seconds * 1000)
        cursor, claimed, *_ = await self._redis.xautoclaim(
            self.source.stream,
            self.source.group,
            self.consumer,
            idle_ms,
            start_id=self._claim_cursor,
            count=self.source.batch,
        )
        self._claim_cursor = cursor
        claimed = [(i, f) for i, f in claimed if f is not None]  # trimmed from the stream
        if not claimed:
            return []
        entries = []
        for entry_id, fields in claimed:
            info = await self._redis.xpending_range(
                self.source.stream, self.source.group, min=entry_id, max=entry_id, count=1
            )
            entries.append(Entry(entry_id, fields, info[0]["times_delivered"] if info else 1))
        log.info("entries_reclaimed", source=self.source.name, count=len(entries))
        return entries

    async def ack(self, entries: list[Entry]) -> None:
        if entries:
            async with _translated(self):
                await self._redis.xack(
                    self.source.stream, self.source.group, *[e.id for e in entries]
                )

    async def dead_letter(self, entry: Entry, reason: str) -> None:
        """Copy the entry and the reason to `<stream>:dead`, then acknowledge it."""
        async with _translated(self), self._redis.pipeline(transaction=True) as pipe:
            pipe.xadd(
                self.dead_stream,
                {
                    **entry.fields,
                    "_entry_id": entry.id,
                    "_reason": reason,
                    "_deliveries": entry.deliveries,
                },
            )
            pipe.xack(self.source.stream, self.source.group, entry.id)
            await pipe.execute()
        log.warning("entry_dead_lettered", source=self.source.name, entry=entry.id, reason=reason)

    async def status(self) -> StreamStatus:
        async with _translated(self):
            await self._ensure_group()
            groups = await self._redis.xinfo_groups(self.source.stream)
            group = next((g for g in groups if g["name"] == self.source.group), {})
            pending = await self._redis.xpending(self.source.stream, self.source.group)
            dead = await self._redis.xlen(self.dead_stream)
        return StreamStatus(group.get("lag"), pending["pending"], dead)


class _translated:
    """redis-py's exceptions → syncd's: an unreachable Redis is a backend outage."""

    def __init__(self, stream: RedisStream) -> None:
        self.stream = stream
        self.source = stream.source

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind, error, tb) -> bool:
        if isinstance(error, (RedisConnectionError, RedisTimeoutError, OSError)):
            raise BackendUnavailable(
                f"Redis for source {self.source.name} is unreachable: {error}"
            ) from error
        if isinstance(error, RedisError):
            if "NOGROUP" in str(error):
                self.stream._group_ready = False  # deleted by hand: made again next read
            raise SourceError(f"Redis for source {self.source.name}: {error}") from error
        return False
