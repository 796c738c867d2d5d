"""The one batching layer every provider shares: chunks of many documents fill the same
requests, up to `batch_size` texts, with up to `max_concurrency` requests in flight while
the caller goes on reading the next documents. A document is handed back only when every
one of its chunks has a vector; a text the API rejects fails only the documents that
contain it.

Vectors are cached by the sha256 of their text (in SQLite, through `cache`) as soon as
they arrive, so a text is never embedded twice, not even after a crash.

Complete documents are written (`on_ready`) by tasks of their own, one write at a time
and in order, while the next requests are already in flight: with a fast API, writing to
Qdrant would otherwise stall the requests (py-spy: a third of a first sync's time). A
write waits behind the one in progress rather than holding up the next request; only
when `_WRITES_QUEUED` writes wait does the batcher stop to let Qdrant catch up.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import structlog

from syncd.embedders import Embedder
from syncd.errors import EmbedRejected

if TYPE_CHECKING:
    import numpy as np

    from syncd.chunking import Chunk

log = structlog.get_logger()

Doc = TypeVar("Doc")
# Complete documents are released at least every this many new documents, so memory
# stays bounded even when nothing needs embedding (a rename of a whole tree).
_RELEASE_EVERY = 512
# Writes waiting behind the one in progress: enough to keep requests going while Qdrant
# catches up, few enough to bound the vectors held for them.
_WRITES_QUEUED = 2


class VectorCache(Protocol):
    def vectors(self, hashes: Iterable[str]) -> dict[str, np.ndarray]: ...

    def add_vectors(self, vectors: dict[str, np.ndarray]) -> None: ...


class Batcher(Generic[Doc]):
    def __init__(
        self,
        embedder: Embedder,
        batch_size: int,
        concurrency: int,
        cache: VectorCache,
        on_ready: Callable[[list[tuple[Doc, list[Chunk]]], dict[str, np.ndarray]], Awaitable[None]],
        on_rejected: Callable[[Doc, str], None],
        on_embedded: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.embedder = embedder
        self.batch_size = min(batch_size, embedder.max_batch)
        self.concurrency = concurrency
        self.cache = cache
        self.on_ready = on_ready
        self.on_rejected = on_rejected
        self.on_embedded = on_embedded
        self.texts_embedded = 0
        self._vectors: dict[str, np.ndarray] = {}
        self._unsent: dict[str, str] = {}
        self._sent: set[str] = set()
        self._rejected: dict[str, str] = {}
        self._waiting: list[tuple[Doc, list[Chunk]]] = []
        # Not "whenever 512 wait": with requests in flight as many may wait for vectors,
        # and scanning them all at every `add` cost more than the rest of a queue's work.
        self._release_at = _RELEASE_EVERY
        self._inflight: dict[asyncio.Task, list[str]] = {}
        self._writes: deque[asyncio.Future[None]] = deque()

    async def add(self, docs: list[tuple[Doc, list[Chunk]]], use_cache: bool = True) -> None:
        """Documents with their chunks; the cache is asked once for all of them."""
        if use_cache:
            # Asked of each container, not of their union: that was built anew at every
            # call, a thousand hashes for a few documents' chunks.
            missing = {
                c.hash
                for _, chunks in docs
                for c in chunks
                if c.hash not in self._vectors
                and c.hash not in self._unsent
                and c.hash not in self._sent
            }
            if missing:
                self._vectors.update(self.cache.vectors(missing))
        for _, chunks in docs:
            for c in chunks:
                if c.hash not in self._vectors and c.hash not in self._sent:
                    self._unsent.setdefault(c.hash, c.text)
        self._waiting += docs
        while len(self._unsent) >= self.batch_size:
            await self._send()
        if len(self._waiting) >= self._release_at:
            await self._release()

    async def flush(self) -> None:
        """Embed what is left (the last batch may be partial) and release every document."""
        while self._unsent:
            await self._send()
        while self._inflight:
            await self._collect()
        await self._release()
        await self._written()

    def reset(self) -> None:
        """Forget everything in progress (after an error): requests are cancelled."""
        for task in self._inflight:
            task.cancel()
        self._inflight.clear()
        # Points already upserted without their state are re-synced next time.
        for write in self._writes:
            write.cancel()
        self._writes.clear()
        self._vectors.clear()
        self._unsent.clear()
        self._sent.clear()
        self._rejected.clear()
        self._waiting.clear()
        self._release_at = _RELEASE_EVERY

    async def _send(self) -> None:
        # One request more than may be in flight waits at the embedder's own gate, sent the
        # moment a slot frees, while the next documents are read and chunked: else the API
        # sat idle while a whole batch was prepared (a third of a 150 ms sync had one
        # request in flight, not two).
        while len(self._inflight) > self.concurrency:
            await self._collect()
        hashes = list(self._unsent)[: self.batch_size]
        texts = [self._unsent.pop(h) for h in hashes]
        self._sent.update(hashes)
        self._inflight[asyncio.ensure_future(self._embed(hashes, texts))] = hashes

    async def _collect(self) -> None:
        done, _ = await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            hashes = self._inflight.pop(task)
            fresh = task.result()
            self._sent.difference_update(hashes)
            # SQLite writes ~1.5 KB a vector without the GIL: the loop sends and parses
            # meanwhile (py-spy: a quarter of the loop's time at 0 ms). Awaited, so vectors
            # are cached before their points are written.
            await asyncio.to_thread(self.cache.add_vectors, fresh)
            self._vectors.update(fresh)
            self.texts_embedded += len(fresh)
            from syncd import metrics  # lazily, as in the engine: a no-op resync never counts

            metrics.chunks_embedded.inc(len(fresh))
            self.on_embedded(len(fresh))
        await self._release()

    async def _embed(self, hashes: list[str], texts: list[str]) -> dict[str, np.ndarray]:
        """One request; if the API rejects it, halve it until the culprits are found."""
        try:
            vectors = await self.embedder.embed(texts, "document")
        except EmbedRejected as e:
            if len(hashes) == 1:
                self._rejected[hashes[0]] = str(e)
                log.warning("text_rejected", chunk_hash=hashes[0], reason=str(e))
                return {}
            middle = len(hashes) // 2
            first = await self._embed(hashes[:middle], texts[:middle])
            return first | await self._embed(hashes[middle:], texts[middle:])
        return dict(zip(hashes, vectors, strict=True))

    async def _written(self) -> None:
        """Wait for every write; a failure is the caller's."""
        while self._writes:
            await self._writes.popleft()

    async def _write_after(
        self,
        previous: asyncio.Future[None] | None,
        ready: list[tuple[Doc, list[Chunk]]],
        vectors: dict[str, np.ndarray],
    ) -> None:
        if previous is not None:
            await previous  # in order, and not at all after a write that failed
        await self.on_ready(ready, vectors)

    async def _release(self) -> None:
        ready, still = [], []
        for doc, chunks in self._waiting:
            reasons = [self._rejected[c.hash] for c in chunks if c.hash in self._rejected]
            if reasons:
                self.on_rejected(doc, f"embedding API rejected a chunk: {reasons[0]}")
            elif all(c.hash in self._vectors for c in chunks):
                ready.append((doc, chunks))
            else:
                still.append((doc, chunks))
        self._waiting = still
        self._release_at = len(still) + _RELEASE_EVERY
        # Finished writes are collected here, so a failed one stops the batcher at once.
        while self._writes and (self._writes[0].done() or len(self._writes) > _WRITES_QUEUED):
            await self._writes.popleft()
        if ready:
            vectors = {c.hash: self._vectors[c.hash] for _, chunks in ready for c in chunks}
            previous = self._writes[-1] if self._writes else None
            self._writes.append(asyncio.ensure_future(self._write_after(previous, ready, vectors)))
        needed = {c.hash for _, chunks in still for c in chunks}
        self._vectors = {h: v for h, v in self._vectors.items() if h in needed}
