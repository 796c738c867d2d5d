"""Documents as events on a Redis Stream, read with a consumer group (all Redis code is here).

Entries carry `op` (upsert | delete), `id` (becomes `path`), `text` and optional
`metadata` (a JSON object). An entry is acknowledged only once its result is durable in
Qdrant and SQLite, so delivery is at-least-once; entries left pending by a dead consumer
(or by a failed try) are reclaimed after `claim_idle_seconds`; an entry that is malformed,
or has been delivered `max_deliveries` times, is copied with its reason to `<stream>:dead`
and acknowledged.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from syncd import metrics
from syncd.config import RedisSource
from syncd.engine import QueuedDocument, Report
from syncd.errors import BackendUnavailable

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


def parse(entry: Entry) -> Parsed:
    """Raise ValueError with the reason for a malformed entry."""
    f = entry.fields
    op, doc_id = f.get("op"), f.get("id")
    if op not in ("upsert", "delete"):
        raise ValueError(f"op must be 'upsert' or 'delete', got {op!r}")
    if not doc_id:
        raise ValueError("missing field 'id'")
    if op == "delete":
        return Parsed(entry, doc_id, None, {})
    if "text" not in f:
        raise ValueError("upsert without field 'text'")
    metadata: Any = {}
    if f.get("metadata"):
        try:
            metadata = json.loads(f["metadata"])
        except ValueError as e:
            raise ValueError(f"metadata is not JSON: {e}") from None
        if not isinstance(metadata, dict):
            raise ValueError("metadata must be a JSON object")
    return Parsed(entry, doc_id, f["text"], metadata)


class RedisStream:
    def __init__(self, source: RedisSource) -> None:
        self.source = source
        self.dead_stream = f"{source.stream}:dead"
        self.consumer = source.consumer or f"{socket.gethostname()}-{os.getpid()}"
        self._redis = redis.Redis.from_url(
            source.url, decode_responses=True, socket_timeout=30, socket_connect_timeout=5
        )
        self._group_ready = False
        self._claim_cursor = "0-0"

    async def close(self) -> None:
        await self._redis.aclose()

    async def read(self, block_ms: int) -> list[Entry]:
        """Reclaimed entries first (stale pending ones), else new ones; at most `batch`."""
        async with _translated(self.source):
            await self._ensure_group()
            entries = await self._reclaim()
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
            async with _translated(self.source):
                await self._redis.xack(
                    self.source.stream, self.source.group, *[e.id for e in entries]
                )

    async def dead_letter(self, entry: Entry, reason: str) -> None:
        """Copy the entry and the reason to `<stream>:dead`, then acknowledge it."""
        async with _translated(self.source), self._redis.pipeline(transaction=True) as pipe:
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
        async with _translated(self.source):
            await self._ensure_group()
            groups = await self._redis.xinfo_groups(self.source.stream)
            group = next((g for g in groups if g["name"] == self.source.group), {})
            pending = await self._redis.xpending(self.source.stream, self.source.group)
            dead = await self._redis.xlen(self.dead_stream)
        return StreamStatus(group.get("lag"), pending["pending"], dead)


class _translated:
    """redis-py's exceptions → syncd's: an unreachable Redis is a backend outage."""

    def __init__(self, source: RedisSource) -> None:
        self.source = source

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind, error, tb) -> bool:
        if isinstance(error, (RedisConnectionError, RedisTimeoutError, OSError)):
            raise BackendUnavailable(
                f"Redis for source {self.source.name} is unreachable: {error}"
            ) from error
        if isinstance(error, RedisError):
            raise BackendUnavailable(f"Redis for source {self.source.name}: {error}") from error
        return False


Apply = Callable[[dict[str, QueuedDocument], dict[str, str]], Awaitable[Report]]
UntilDone = Callable[[Callable[[], Awaitable[Any]], asyncio.Event], Awaitable[Any]]


async def follow(
    stream: RedisStream,
    apply: Apply,
    last_applied: Callable[[set[str]], dict[str, str]],
    until_done: UntilDone,
    stop: asyncio.Event,
) -> None:
    """Read, apply and acknowledge entries until `stop`; outages are waited out by `until_done`.

    `last_applied` maps document ids to the newest entry id already applied to them.

    While the embedder, Qdrant or Redis is down the current batch is retried and nothing
    new is read, so memory stays bounded by `batch` entries.
    """
    source = stream.source
    observed = 0.0
    while not stop.is_set():
        if time.monotonic() - observed >= _OBSERVE_EVERY:
            await _observe(stream)
            observed = time.monotonic()
        entries = await until_done(lambda: stream.read(block_ms=1000), stop)
        if not entries:
            continue
        good = []
        for entry in entries:
            try:
                good.append(parse(entry))
            except ValueError as e:
                await until_done(
                    functools.partial(stream.dead_letter, entry, f"malformed: {e}"), stop
                )
        winners, done = _latest_per_document(good, last_applied({p.doc_id for p in good}))
        upserts = {
            d: QueuedDocument(p.text, p.metadata, p.entry.id)
            for d, p in winners.items()
            if p.text is not None
        }
        deletes = {d: p.entry.id for d, p in winners.items() if p.text is None}
        report = await until_done(functools.partial(apply, upserts, deletes), stop)
        if report is None:
            return  # stopped mid-outage: the entries stay pending for the next run
        failed = {f["path"]: f["reason"] for f in report.failures}
        done += [p.entry for d, p in winners.items() if d not in failed]
        await until_done(functools.partial(stream.ack, done), stop)
        for doc_id, reason in failed.items():
            entry = winners[doc_id].entry
            if entry.deliveries >= source.max_deliveries:
                await until_done(functools.partial(stream.dead_letter, entry, reason), stop)
            # Otherwise it stays pending and is reclaimed after claim_idle_seconds.


# Stream lag, pending and dead letters are sampled for /metrics this often.
_OBSERVE_EVERY = 5.0


async def _observe(stream: RedisStream) -> None:
    try:
        status = await stream.status()
    except BackendUnavailable:
        return  # the read that follows waits the outage out
    name = stream.source.name
    metrics.stream_lag.labels(name).set(status.lag or 0)
    metrics.stream_pending.labels(name).set(status.pending)
    metrics.dead_letters.labels(name).set(status.dead)


def _latest_per_document(
    parsed: list[Parsed], applied: dict[str, str]
) -> tuple[dict[str, Parsed], list[Entry]]:
    """The newest entry per document, and the entries it supersedes (acked with it).

    An entry older than the one last applied for its document (a late redelivery) is
    superseded too, so an old text never overwrites a newer one.
    """
    winners: dict[str, Parsed] = {}
    superseded: list[Entry] = []
    for p in sorted(parsed, key=lambda p: entry_order(p.entry.id)):
        last = applied.get(p.doc_id)
        if last is not None and entry_order(last) >= entry_order(p.entry.id):
            superseded.append(p.entry)
            continue
        if p.doc_id in winners:
            superseded.append(winners[p.doc_id].entry)
        winners[p.doc_id] = p
    return winners, superseded
