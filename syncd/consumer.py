"""The daemon's queue consumer: read entries, apply them through the engine, acknowledge.

An entry is acknowledged only once its result is durable in Qdrant and SQLite, so
delivery is at-least-once. A malformed entry, or one whose text the embedder rejects, is
dead-lettered with its reason at once; one that failed otherwise stays pending, is
reclaimed after `claim_idle_seconds`, and is dead-lettered after `max_deliveries`.

While the embedder, Qdrant or Redis is down the current batch is retried and nothing new
is read, so memory stays bounded by `batch` entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from typing import TYPE_CHECKING

import structlog

from syncd import metrics
from syncd.config import RedisSource
from syncd.daemon import MAX_BACKOFF_SECONDS, until_done
from syncd.errors import BackendUnavailable
from syncd.plan import queue_plan
from syncd.sources.redis_stream import Entry, Parsed, RedisStream, entry_order, parse
from syncd.state import QueuedText

if TYPE_CHECKING:
    from syncd.daemon import Daemon

log = structlog.get_logger()

# Stream lag, pending and dead letters are sampled for /metrics this often.
_OBSERVE_EVERY = 5.0


async def consume(daemon: Daemon, source: RedisSource, stop: asyncio.Event) -> None:
    """Supervise one source's consumer: whatever ends it early is logged, turns /readyz to
    503 and starts it again with backoff. A consumer never dies silently."""
    backoff = 1.0
    while not stop.is_set():
        stream = RedisStream(source)
        try:
            await _follow(daemon, stream, stop)
            return
        except Exception as e:  # anything: else the queue silently stops
            daemon.consumers_down.add(source.name)
            log.error("consumer_stopped", source=source.name, error=repr(e), retry_in=backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
        finally:
            await stream.close()


async def _follow(daemon: Daemon, stream: RedisStream, stop: asyncio.Event) -> None:
    source = stream.source
    observed = 0.0

    def health(ok: bool) -> None:
        if ok:
            daemon.consumers_down.discard(source.name)
        else:
            daemon.consumers_down.add(source.name)

    async def retried(work):
        return await until_done(work, stop, health)

    while not stop.is_set():
        if time.monotonic() - observed >= _OBSERVE_EVERY:
            await _observe(stream)
            observed = time.monotonic()
        entries = await retried(lambda: stream.read(block_ms=1000))
        if entries and not await _apply(daemon, stream, entries, retried):
            return  # stopped mid-outage: the entries stay pending for the next run


async def _apply(daemon: Daemon, stream: RedisStream, entries: list[Entry], retried) -> bool:
    """Apply one read's entries, acknowledge or dead-letter each; False if stopped first."""
    source, state = stream.source, daemon.engine.state
    good = []
    for entry in entries:
        try:
            good.append(parse(entry))
        except ValueError as e:
            await retried(functools.partial(stream.dead_letter, entry, f"malformed: {e}"))
    applied = state.queued(source.name, {p.doc_id for p in good})
    winners, done = latest_per_document(good, {d: q.entry_id for d, q in applied.items()})
    upserts = {
        d: QueuedText(p.entry.id, p.text, p.metadata)
        for d, p in winners.items()
        if p.text is not None
    }
    deletes = {d: p.entry.id for d, p in winners.items() if p.text is None}

    async def apply():
        async with daemon.busy:
            return await daemon.engine.apply(queue_plan(state, source.name, upserts, deletes))

    report = await retried(apply)
    if report is None:
        return False
    failed = {f.path: f for f in report.failures}
    done += [p.entry for d, p in winners.items() if d not in failed]
    await retried(functools.partial(stream.ack, done))
    for doc_id, failure in failed.items():
        entry = winners[doc_id].entry
        # A rejected text would be rejected again: no use waiting for redeliveries.
        if failure.rejected or entry.deliveries >= source.max_deliveries:
            await retried(functools.partial(stream.dead_letter, entry, failure.reason))
        # Otherwise it stays pending and is reclaimed after claim_idle_seconds.
    return True


async def _observe(stream: RedisStream) -> None:
    try:
        status = await stream.status()
    except BackendUnavailable:
        return  # the read that follows waits the outage out
    name = stream.source.name
    metrics.stream_lag.labels(name).set(status.lag or 0)
    metrics.stream_pending.labels(name).set(status.pending)
    metrics.dead_letters.labels(name).set(status.dead)


def latest_per_document(
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
