"""The daemon's queue consumer: read entries, apply them through the engine, acknowledge.

An entry is acknowledged only once its result is durable in Qdrant and SQLite, so
delivery is at-least-once. A malformed entry, or one whose text the embedder rejects, is
dead-lettered with its reason at once; one that failed otherwise stays pending, is
reclaimed after `claim_idle_seconds`, and is dead-lettered after `max_deliveries`.

Reads go on while requests are in flight, into the same embedding batches; a read waits
while `max_concurrency` requests are out and one more is full, so memory stays bounded by
a few batches. While the embedder, Qdrant or Redis is down the entries read and not yet
acked are retried and nothing new is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import structlog

from syncd import metrics
from syncd.config import RedisSource
from syncd.daemon import MAX_BACKOFF_SECONDS, until_done
from syncd.errors import BackendUnavailable
from syncd.plan import Upsert, queue_plan
from syncd.sources.redis_stream import Entry, Parsed, RedisStream, entry_order, parse
from syncd.state import QueuedText

if TYPE_CHECKING:
    from syncd.daemon import Daemon
    from syncd.engine import Feed

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
    batches = _Batches(daemon, stream, stop)

    def health(ok: bool) -> None:
        if ok:
            daemon.consumers_down.discard(source.name)
        else:
            daemon.consumers_down.add(source.name)

    while not stop.is_set():
        await batches.observe()
        entries = await until_done(lambda: stream.read(block_ms=1000), stop, health)
        if not entries:
            continue
        batches.unacked.update((e.id, e) for e in entries)
        if await until_done(batches.run, stop, health) is None:
            return  # stopped mid-outage: the entries stay pending for the next run


class _Batches:
    """Reads applied one after another through the same embedding batches, so requests
    stay full and `max_concurrency` of them in flight across read boundaries (one read at
    a time left the API idle between reads and cut its last request short).

    An entry is acked once its document is written (or deleted, or found unchanged); a
    read that touches a document still in flight waits for it first, so the latest entry
    lands last. After an outage every entry not acked yet is applied again: those already
    written come out unchanged.
    """

    def __init__(self, daemon: Daemon, stream: RedisStream, stop: asyncio.Event) -> None:
        self.daemon, self.stream, self.stop = daemon, stream, stop
        self.source = stream.source
        #: Entry id → every entry read and neither acked nor dead-lettered nor left pending.
        self.unacked: dict[str, Entry] = {}
        #: Document → the entry of its upsert in flight.
        self.writing: dict[str, Entry] = {}
        self.written: list[Entry] = []
        self.observed = 0.0

    async def run(self) -> bool:
        """Apply the unacked entries and whatever the stream holds beyond them, until it
        is caught up or a rescan, hint or /resync waits for the engine; then flush."""
        self.writing.clear()
        self.written.clear()
        entries = list(self.unacked.values())
        busy, engine = self.daemon.busy, self.daemon.engine
        async with busy, engine.stream(self.source.name, self._on_written) as feed:
            while entries:
                await self._apply(feed, entries)
                if self.stop.is_set() or busy.waiting:
                    break
                await self.observe()
                entries = await self.stream.read(block_ms=None, reclaim=False)
                self.unacked.update((e.id, e) for e in entries)
            await feed.flush()
            await self._settle(feed)
        return True

    async def observe(self) -> None:
        if time.monotonic() - self.observed >= _OBSERVE_EVERY:
            await _observe(self.stream)
            self.observed = time.monotonic()

    def _on_written(self, upserts: list[Upsert]) -> None:
        self.written += [self.writing.pop(u.path) for u in upserts if u.path in self.writing]

    async def _apply(self, feed: Feed, entries: list[Entry]) -> None:
        good = []
        for entry in entries:
            try:
                good.append(parse(entry))
            except ValueError as e:
                await self.stream.dead_letter(entry, f"malformed: {e}")
                del self.unacked[entry.id]
        if any(p.doc_id in self.writing for p in good):
            await feed.flush()
        await self._settle(feed)
        state, name = self.daemon.engine.state, self.source.name
        applied = state.queued(name, {p.doc_id for p in good})
        winners, done = latest_per_document(good, {d: q.entry_id for d, q in applied.items()})
        upserts = {
            d: QueuedText(p.entry.id, p.text, p.metadata)
            for d, p in winners.items()
            if p.text is not None
        }
        deletes = {d: p.entry.id for d, p in winners.items() if p.text is None}
        plan = queue_plan(state, name, upserts, deletes)
        writing = {u.path for u in plan.upserts}
        self.writing.update((d, p.entry) for d, p in winners.items() if d in writing)
        await feed.apply(plan)
        # Superseded entries go at once: the newer entry of their document is still pending.
        await self._ack(done + [p.entry for d, p in winners.items() if d not in writing])

    async def _settle(self, feed: Feed) -> None:
        """Ack what is written; dead-letter what failed for good, leave the rest pending."""
        failures, feed.report.failures = feed.report.failures, []
        for failure in failures:
            entry = self.writing.pop(failure.path, None)
            if entry is None:
                continue
            # A rejected text would be rejected again: no use waiting for redeliveries.
            if failure.rejected or entry.deliveries >= self.source.max_deliveries:
                await self.stream.dead_letter(entry, failure.reason)
            # Otherwise it stays pending and is reclaimed after claim_idle_seconds.
            del self.unacked[entry.id]
        written, self.written = self.written, []
        await self._ack(written)

    async def _ack(self, entries: list[Entry]) -> None:
        await self.stream.ack(entries)
        for e in entries:
            self.unacked.pop(e.id, None)


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
