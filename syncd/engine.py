"""Apply a plan to Qdrant and SQLite; one resync shared by `run`, `resync` and POST /resync.

Order of writes, so that a crash at any moment leaves nothing the next run cannot repair:
  1. new vectors go to the SQLite vector cache as soon as they exist (never embedded twice);
  2. a document's points are upserted under deterministic ids, then its surplus chunks
     are deleted by filter;
  3. only then is the document recorded as synced in SQLite.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import structlog

from syncd.config import FolderSource, RedisSource, Settings
from syncd.embedders import Embedder, make_embedder, model_id
from syncd.embedders.batching import Batcher
from syncd.errors import (
    DocumentError,
    SourceUnavailable,
    StoreError,
    StoreMismatch,
    UnsupportedFormat,
)
from syncd.extract import Extracted
from syncd.extract_pool import ExtractPool
from syncd.plan import Delete, Plan, Upsert, folder_plan, repair_plan, text_hash
from syncd.rebuild import Rebuilt, rebuild_state
from syncd.report import Failure, Progress, Report
from syncd.sources import folder, source_status
from syncd.state import State, Synced, open_state
from syncd.store import (
    Hit,
    Identity,
    PendingStore,
    PointData,
    SearchQuery,
    Store,
    open_store,
    point_id,
    promote,
    seal,
)
from syncd.switch import (
    Switch,
    active_embedder,
    finish_interrupted_switch,
    open_switch,
    other_embedder,
)

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np

    from syncd.chunking import Chunk

log = structlog.get_logger()

# Documents read and extracted at once (threads; kreuzberg and file reads release the GIL).
EXTRACT_CONCURRENCY = 4
# A queue text this short is chunked in less time than a hop to a thread costs (py-spy:
# the hops were a tenth of a stream of 30-word entries).
INLINE_CHUNK_CHARS = 4_000


@dataclass(frozen=True)
class Feed:
    """What `Engine.stream` hands out: apply a plan into the shared batches, flush them."""

    apply: Callable[[Plan], Awaitable[None]]
    flush: Callable[[], Awaitable[None]]
    report: Report


@dataclass
class _Prepared:
    change: Upsert
    doc_hash: str
    doc: Extracted
    chunks: list[Chunk]


class Engine:
    def __init__(
        self,
        settings: Settings,
        state: State,
        store: Store | None,
        embedder: Embedder | None,
        progress: Progress | None = None,
    ) -> None:
        self.settings = settings
        self.state = state
        self.store = store
        self.embedder = embedder
        self.progress = progress or Progress()
        self.stopping = asyncio.Event()
        self.extract_pool = ExtractPool()
        #: Set when `opened` rebuilt a lost or unreadable state from the store.
        self.rebuilt: Rebuilt | None = None
        #: The index of `embedder_next` being built; None when there is none.
        self.switch: Switch | None = None
        #: The embedder is the engine's to close (not one its caller passed in).
        self.owns_embedder = False
        #: Opens the embedder and the store, where `opened` left that to the first write.
        self._opener: Callable[[], Awaitable[None]] | None = None
        # Cleared while the switch replaces the store: reads wait, never see it closed.
        self._readable = asyncio.Event()
        self._readable.set()
        self._reading = 0

    async def open(self) -> None:
        """Open the embedder and the store, if `opened` has not yet."""
        opener, self._opener = self._opener, None
        if opener is not None:
            await opener()

    def plan(
        self,
        source: FolderSource | RedisSource,
        force: bool = False,
        retry_failed: bool = True,
        allow_delete: bool = False,
    ) -> Plan:
        """A full reconcile: of the files for a folder, of the store for a queue."""
        if isinstance(source, RedisSource):
            return repair_plan(self.state, self.store, source.name)
        return folder_plan(
            self.state,
            self.store,
            source,
            force,
            retry_failed=retry_failed,
            allow_delete=allow_delete,
        )

    async def resync(
        self,
        sources: list[FolderSource | RedisSource] | None = None,
        force: bool = False,
        retry_failed: bool = True,
        allow_delete: bool = False,
    ) -> Report:
        """Reconcile these sources (all by default) with the store, one after another.

        The daemon's own rescans retry failed documents with backoff (`retry_failed`
        false), a user's at once. A source that looks unmounted is reported in
        `unavailable` and the others go on.
        """
        started = time.monotonic()
        total = Report()
        for source in sources or self.settings.sources:
            if self.stopping.is_set():
                break
            if isinstance(source, RedisSource):
                await self.open()  # its plan asks the store
            try:
                plan = self.plan(source, force, retry_failed, allow_delete)
            except SourceUnavailable as e:
                log.warning("source_unavailable", source=source.name, error=str(e))
                total.unavailable[source.name] = str(e)
                continue
            total.merge(await self.apply(plan))
        self.state.drop_unused_vectors(self.settings.state.vector_retention_days)
        total.seconds = time.monotonic() - started
        return total

    async def apply(self, plan: Plan) -> Report:
        """Delete, then read, chunk, embed and write every upsert of the plan.

        Stops taking new documents once `stopping` is set; what is already read is
        finished, so a shutdown waits for at most one round of embedding batches.
        """
        started = time.monotonic()
        if plan.size:
            await self.open()
        report = Report()
        self._record_listing(plan, report)
        if plan.upserts:
            async with self._batching(report) as batcher:
                await self._feed(plan, batcher, report)
        else:  # the embedder may not be open: nothing to embed
            await self._feed(plan, None, report)
        await self._optimize(report)
        if not self.stopping.is_set():
            self.state.set_pending(plan.source, 0, synced=True)
        report.seconds = time.monotonic() - started
        log.info("reconcile_finished", source=plan.source, **_counts(report))
        return report

    @asynccontextmanager
    async def stream(
        self, source: str, written: Callable[[list[Upsert]], None]
    ) -> AsyncIterator[Feed]:
        """Plans applied one after another through the same embedding batches (a queue's
        reads), so requests stay full and in flight from one plan to the next.

        `written` hears of upserts once their state is recorded; failures gather in
        `feed.report.failures`. A plan must not hold a document an earlier one still has
        in flight (`feed.flush()` first), or the older text could land last.
        """
        started = time.monotonic()
        await self.open()
        report = Report()
        async with self._batching(report, written) as batcher:
            yield Feed(lambda plan: self._feed(plan, batcher, report), batcher.flush, report)
        await self._optimize(report)
        self.state.set_pending(source, 0, synced=True)
        report.seconds = time.monotonic() - started
        log.info("reconcile_finished", source=source, **_counts(report))

    async def _optimize(self, report: Report) -> None:
        """Index what the pass wrote (see EdgeStore.optimize)."""
        if report.added or report.updated or report.deleted:
            await asyncio.to_thread(self.store.optimize)

    async def _feed(self, plan: Plan, batcher: Batcher[_Prepared] | None, report: Report) -> None:
        """Delete, then read, chunk and hand every upsert of the plan to the batches.

        The plan's upserts are handed over and each is let go once it is written: a first
        sync of a million files held some 300 MB of them to its end, its peak.
        """
        self.state.set_pending(plan.source, plan.size)
        self.progress.documents_total += plan.size
        log.info(
            "reconcile_planned",
            source=plan.source,
            upsert=len(plan.upserts),
            delete=len(plan.deletes),
            unchanged=plan.unchanged,
        )
        report.unchanged += plan.unchanged
        self._delete(plan.deletes, report)
        pending, plan.upserts = plan.upserts[::-1], []  # taken from the end, in order
        while pending:
            if self.stopping.is_set():
                self.state.set_pending(plan.source, len(pending))
                break
            assert batcher is not None  # there are upserts
            window = [pending.pop() for _ in range(min(EXTRACT_CONCURRENCY, len(pending)))]
            prepared = await asyncio.gather(*(self._prepare(u, plan.force, report) for u in window))
            ready = [(p, p.chunks) for p in prepared if p is not None]
            await batcher.add(ready, use_cache=not plan.force)

    async def search(self, query: SearchQuery) -> list[Hit]:
        """Embeds the query's text as a query (not for keyword search), then asks the store."""
        async with self._read() as (store, embedder):
            if store is None:
                return []
            if query.mode != "keyword":
                (vector,) = await embedder.embed([query.text], "query")
                query = replace(query, dense=vector)
            return await asyncio.to_thread(store.search, query)

    async def document(self, source: str, path: str) -> list[dict[str, Any]]:
        """The payloads of a document's points in chunk order; [] if it has none."""
        async with self._read() as (store, _):
            if store is None:
                return []
            return await asyncio.to_thread(store.document, source, path)

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[tuple[Store | None, Embedder]]:
        """The store and the embedder that made it, as one pair, never closed meanwhile."""
        await self._readable.wait()
        self._reading += 1
        try:
            yield self.store, self.embedder
        finally:
            self._reading -= 1

    # -- a new embedder -------------------------------------------------------------------

    async def build_next(self, whole: bool = True) -> bool:
        """Build the index of `embedder_next`: one page of it, or all of it (`whole`), then,
        once it is complete, switch to it. True when there is nothing left to build.

        The caller lets no plan apply meanwhile (the daemon holds its lock), so the last
        pass sees the active index standing still.
        """
        switch = self.switch
        if switch is None:
            return True
        if self.state.switching() is None:
            while not await switch.step(self.store):
                if not whole or self.stopping.is_set():
                    return False
            await switch.finish(self.store)
            self.state.begin_switch()
        await self._switch_to(switch)
        return True

    async def _switch_to(self, switch: Switch) -> None:
        """The built index becomes the active one and its embedder the engine's, for every
        read at once; the old index and its cached vectors go. Run again after a failure
        (Qdrant down), it goes on where it stopped."""
        self._readable.clear()
        try:
            while self._reading:
                await asyncio.sleep(0.005)
            identity = switch.close_store()
            if self.store is not None:
                self.store.close()
                self.store = None
            await asyncio.to_thread(promote, self.settings.qdrant, switch.target)
            self.state.finish_switch(identity.dimension)
            # Only the commands that sync switch: their shard runs in a process of its own.
            reopen = functools.partial(open_store, self.settings.qdrant, identity, process=True)
            self.store = await asyncio.to_thread(reopen)
            old, self.embedder = self.embedder, switch.embedder
        finally:
            self._readable.set()
        if self.owns_embedder:
            await old.aclose()
        self.owns_embedder = True
        self.switch = None
        log.warning(
            "embedder_switched",
            model=identity.model,
            dimension=identity.dimension,
            points=sum(self.store.count_by_source().values()),
            hint="move the embedder_next section of the config to embedder",
        )

    async def sources(self) -> list[dict[str, Any]]:
        """Every source's `syncd status` row."""
        return [await source_status(self.state, s) for s in self.settings.sources]

    # -- deleting ---------------------------------------------------------------------------

    def _record_listing(self, plan: Plan, report: Report) -> None:
        """What the scan could not see and what it would not delete, for `status`."""
        if plan.full or plan.unlisted or plan.held:
            self.state.set_listing_problems(plan.source, plan.unlisted, plan.held, plan.full)
        report.unlisted = [f"{plan.source}/{d or '.'}: {e}" for d, e in plan.unlisted.items()]
        report.held = len(plan.held)
        if plan.held:
            log.warning(
                "deletions_held",
                source=plan.source,
                held=len(plan.held),
                apply=f"syncd resync --source {plan.source} --allow-delete",
            )

    def _delete(self, deletes: list[Delete], report: Report) -> None:
        by_entry = [d for d in deletes if d.entry_id is not None]
        plain = [d for d in deletes if d.entry_id is None]
        for d in by_entry:
            self.store.delete_documents(d.source, [d.path])
            self.state.forget(d.source, [d.path], d.entry_id)
        for i in range(0, len(plain), 1000):
            part = plain[i : i + 1000]
            source, paths = part[0].source, [d.path for d in part]
            self.store.delete_documents(source, paths)
            self.state.forget(source, paths)
        report.deleted += len(deletes)
        self.progress.advance(documents=len(deletes))

    # -- preparing: bytes or text → extracted document and chunks ------------------------

    async def _prepare(self, u: Upsert, force: bool, report: Report) -> _Prepared | None:
        if u.queued is not None:
            return await self._prepare_text(u)
        return await self._prepare_file(u, force, report)

    async def _prepare_text(self, u: Upsert) -> _Prepared:
        q = u.queued
        fmt, title = q.metadata.get("format"), q.metadata.get("title")
        doc = Extracted(
            text=q.text,
            format=fmt if isinstance(fmt, str) and fmt.startswith("text/") else "text/plain",
            title=title if isinstance(title, str) else None,
            metadata=q.metadata,
        )
        if len(q.text) <= INLINE_CHUNK_CHARS:
            chunks = self._chunk(doc)
        else:
            chunks = await asyncio.to_thread(self._chunk, doc)
        return _Prepared(u, text_hash(q.text), doc, chunks)

    async def _prepare_file(self, u: Upsert, force: bool, report: Report) -> _Prepared | None:
        """Read, hash, extract and chunk one file; record it as failed or skipped if it must be."""
        source = self.settings.source(u.source)
        if u.stat.size > source.max_file_bytes:
            reason = f"larger than max_file_bytes ({u.stat.size} > {source.max_file_bytes})"
            self._problem(u, "skipped", reason, report)
            return None
        try:
            data = await asyncio.to_thread(folder.read, source, u.path)
        except FileNotFoundError:
            # Gone since the scan: it is no longer a current document.
            self._delete([Delete(u.source, u.path)], report)
            return None
        except DocumentError as e:  # not a regular file, or outside the root, by now
            self._problem(u, "failed", str(e), report)
            return None
        except OSError as e:
            self._problem(u, "failed", f"unreadable: {e.strerror}", report, keep_points=True)
            return None
        doc_hash = hashlib.sha256(data).hexdigest()
        known = u.known
        if (
            not force
            and known is not None
            and known.status == "done"
            and known.doc_hash == doc_hash
            and u.points_before == known.chunk_count
        ):
            self.state.touch(u.source, u.path, u.stat.size, u.stat.mtime_ns)
            report.unchanged += 1
            self.progress.advance(documents=1)
            return None
        ocr = source.ocr_language if source.ocr else None
        try:
            # In a worker process that is killed at the timeout or past its memory cap.
            doc = await self.extract_pool.extract(u.path, data, ocr, source.extract_timeout_seconds)
        except UnsupportedFormat as e:
            self._problem(u, "skipped", str(e), report)
            return None
        except DocumentError as e:
            if not self.stopping.is_set():  # cut off by a shutdown: the next run redoes it
                self._problem(u, "failed", str(e), report)
            return None
        chunks = await asyncio.to_thread(self._chunk, doc)
        return _Prepared(u, doc_hash, doc, chunks)

    def _chunk(self, doc: Extracted) -> list[Chunk]:
        from syncd.chunking import chunk_text  # and numpy: a no-op reconcile chunks nothing

        c = self.settings.chunking
        return chunk_text(doc.text, c.max_chars, c.overlap_chars, doc.is_markdown, doc.paged)

    def _problem(
        self,
        u: Upsert,
        status: str,
        reason: str,
        report: Report,
        rejected: bool = False,
        keep_points: bool = False,
    ) -> None:
        """A failed or skipped document has no points, and says why; one whose file
        cannot be read right now (`keep_points`) keeps those it was last synced with."""
        if keep_points and u.known is not None and u.known.chunk_count:
            self.state.record_unreadable(u.source, u.path, reason)
        else:
            with suppress(StoreError):  # the store refusing is often why we are here
                self.store.delete_documents(u.source, [u.path])
            size, mtime_ns = (u.stat.size, u.stat.mtime_ns) if u.stat else (0, 0)
            self.state.record_problem(u.source, u.path, size, mtime_ns, status, reason)
        if status == "failed":
            report.failed += 1
            report.failures.append(Failure(u.source, u.path, reason, rejected))
            log.warning("document_failed", source=u.source, path=u.path, reason=reason)
        else:
            report.skipped += 1
            log.info("document_skipped", source=u.source, path=u.path, reason=reason)
        self.progress.advance(documents=1)

    # -- embedding and writing ------------------------------------------------------------

    @asynccontextmanager
    async def _batching(
        self, report: Report, written: Callable[[list[Upsert]], None] = lambda upserts: None
    ) -> AsyncIterator[Batcher[_Prepared]]:
        """Embedding batches shared by every document of one plan (or a stream of them);
        flushed at the end, abandoned (requests cancelled) if applying fails."""
        batcher: Batcher[_Prepared] = Batcher(
            self.embedder,
            self.settings.embedder.batch_size,
            self.settings.embedder.max_concurrency,
            self.state,
            on_ready=lambda ready, vectors: self._write(ready, vectors, report, written),
            on_rejected=lambda p, reason: self._problem(
                p.change, "failed", reason, report, rejected=True
            ),
            on_embedded=lambda n: self.progress.advance(texts=n),
        )
        try:
            yield batcher
            await batcher.flush()
        finally:
            batcher.reset()
            report.texts_embedded += batcher.texts_embedded

    async def _write(
        self,
        ready: list[tuple[_Prepared, list[Chunk]]],
        vectors: dict[str, np.ndarray],
        report: Report,
        written: Callable[[list[Upsert]], None],
    ) -> None:
        """Points first (idempotent), surplus points next, the state last.

        A write the store refuses fails only the documents concerned. The points are built
        and written in a thread (BM25 and Qdrant Edge are native code), so the event loop
        goes on with the embedding requests meanwhile.
        """
        docs = [p for p, _ in ready]
        try:
            await asyncio.to_thread(self._upsert, docs, vectors)
        except StoreError:
            written = []
            for p in docs:
                try:
                    self._upsert([p], vectors)
                    written.append(p)
                except StoreError as e:
                    self._problem(p.change, "failed", f"Qdrant refused the points: {e}", report)
            docs = written
        self.state.record_synced([_synced(p) for p in docs])
        report.added += sum(p.change.known is None for p in docs)
        report.updated += sum(p.change.known is not None for p in docs)
        self.progress.advance(documents=len(docs))
        written([p.change for p in docs])
        # Here, not at the top: prometheus_client is ~50 ms a no-op `resync` need not pay.
        from syncd import metrics

        metrics.documents_synced.inc(len(docs))

    def _upsert(self, docs: list[_Prepared], vectors: dict[str, np.ndarray]) -> None:
        points = [point for p in docs for point in _points(p, vectors)]
        for i in range(0, len(points), 1000):
            self.store.upsert(points[i : i + 1000])
        # One delete per chunk count, not per document: every queue document is trimmed.
        trims: dict[tuple[str, int], list[str]] = {}
        for p in docs:
            before = p.change.points_before
            if before is None or before > len(p.chunks):
                trims.setdefault((p.change.source, len(p.chunks)), []).append(p.change.path)
        for (source, keep), paths in trims.items():
            self.store.trim(source, paths, keep)


def _synced(p: _Prepared) -> Synced:
    u = p.change
    if u.stat is not None:
        size, mtime_ns = u.stat.size, u.stat.mtime_ns
    else:  # a queue document has no file: its size is its text's, it has no mtime
        size, mtime_ns = len(u.queued.text.encode("utf-8")), 0
    return Synced(
        u.source, u.path, size, mtime_ns, p.doc_hash, [c.hash for c in p.chunks], u.queued
    )


def _points(p: _Prepared, vectors: dict[str, np.ndarray]) -> list[PointData]:
    u = p.change
    base: dict[str, Any] = {
        "source": u.source,
        "path": u.path,
        "chunk_count": len(p.chunks),
        "doc_hash": p.doc_hash,
        "metadata": p.doc.metadata,
        "format": p.doc.format,
    }
    if u.stat is not None:
        base["mtime"] = u.stat.mtime_ns / 1e9
    if p.doc.title:
        base["title"] = p.doc.title
    return [
        PointData(
            point_id(u.source, u.path, i),
            vectors[c.hash],
            {
                **base,
                "chunk_index": i,
                "text": c.text,
                "chunk_hash": c.hash,
                **({"page": c.page} if c.page is not None else {}),
            },
        )
        for i, c in enumerate(p.chunks)
    ]


def _counts(report: Report) -> dict[str, object]:
    return {k: v for k, v in asdict(report).items() if not isinstance(v, list | dict)}


@asynccontextmanager
async def opened(
    settings: Settings,
    rebuild: bool = False,
    create: bool = True,
    progress: Progress | None = None,
    embedder: Embedder | None = None,
    build_next: bool = False,
    lazy: bool = False,
) -> AsyncIterator[Engine]:
    """State, embedder and store for one command, closed in reverse order however it ends.

    With `build_next` (the commands that sync) and an `embedder_next` in the config, the
    engine gets the `switch` that builds its index (see syncd/switch.py).

    With `create` false a missing collection is not made (`engine.store` is None then).
    An `embedder` passed in is the caller's to close. Nothing in the state changes before
    the store has accepted the embedder, so a refused command leaves everything as it was.
    A state file that is missing or unreadable is rebuilt from the store (`engine.rebuilt`).

    With `lazy` (a one-shot resync), the embedder and the store wait for the first plan
    with work (`Engine.open`), as long as the store is sealed (see `_sealed`): a resync
    that finds nothing to do reads only the state and the files.
    """
    state, moved_aside = open_state(settings.state.path)
    engine = Engine(settings, state, None, None, progress)
    try:
        if build_next:
            finish_interrupted_switch(settings, state)
        engine._opener = functools.partial(
            _open, engine, rebuild, create, embedder, build_next, moved_aside
        )
        if not (lazy and not rebuild and moved_aside is None and _sealed(settings, state)):
            await engine.open()
        yield engine
    finally:
        engine.extract_pool.close()  # kills what still runs: shutdown stays bounded
        if engine.switch is not None:
            await engine.switch.close()
        if engine.store is not None:
            # Loading the shard changes its files: the commands that sync seal it again.
            _close(engine, sealing=build_next)
        # A store process started for a store that never opened (see `_open`).
        if (process := sys.modules.get("syncd.store.process")) is not None:
            process.discard_spare()
        if engine.owns_embedder:
            await engine.embedder.aclose()
        state.close()


async def _open(
    engine: Engine,
    rebuild: bool,
    create: bool,
    embedder: Embedder | None,
    build_next: bool,
    moved_aside: Path | None,
) -> None:
    settings, state = engine.settings, engine.state
    own = embedder is None
    if build_next and settings.qdrant.url is None:
        from syncd.store import process

        process.prestart()  # see open_store(process=True) below
    if embedder is None:
        embedder = make_embedder(active_embedder(settings, state))
        engine.embedder, engine.owns_embedder = embedder, True
        # Known from an earlier run: a remote API need not be asked for it.
        embedder.dimension = state.known_dimension(embedder.model_id) or embedder.dimension
        await embedder.start()
    switched_under_us = False
    try:
        store = await _open_store(settings, embedder, rebuild, create, build_next)
    except StoreMismatch:
        # A reader beside a daemon that is switching: the index may be the new one,
        # whose state the daemon is about to record (so this reader records nothing).
        other = None if build_next or not own else other_embedder(settings, embedder)
        if other is None:
            raise
        await embedder.aclose()
        engine.owns_embedder = False
        embedder = make_embedder(other)
        engine.embedder, engine.owns_embedder = embedder, True
        await embedder.start()
        store = await _open_store(settings, embedder, rebuild, create, build_next)
        switched_under_us = True
    engine.store, engine.embedder = store, embedder
    if store is not None:
        state.seal_store(None)  # written from now on: sealed again only as it closes
    sources = {s.name for s in settings.sources}
    engine.rebuilt = rebuild_state(state, store, sources, embedder.model_id, moved_aside)
    if not switched_under_us:
        state.use_embedder(embedder.model_id, embedder.dimension)
    if build_next:
        engine.switch = await open_switch(settings, state, embedder.model_id)


def _sealed(settings: Settings, state: State) -> bool:
    """The store holds just the points the state expects, so far as its sealed files show,
    and was built by the configured embedder; no switch of embedders is under way."""
    if settings.embedder_next is not None or state.next_embedder() is not None:
        return False
    model = model_id(settings.embedder)
    dimension = state.known_dimension(model)
    recorded = state.store_seal()
    return (
        recorded is not None
        and dimension is not None
        and recorded == seal(settings.qdrant, Identity(model, dimension))
    )


def _close(engine: Engine, sealing: bool) -> None:
    """Close the store; with `sealing`, sealed (its files' digest recorded in the state)
    if it holds, for every configured source, the points the state expects: what
    `folder_plan` would ask the store first, answered now instead of by loading it again."""
    store, state, settings = engine.store, engine.state, engine.settings
    consistent = False
    if sealing and settings.qdrant.url is None:
        with suppress(StoreError):
            counts = store.count_by_source()
            consistent = all(
                counts.get(s.name, 0) == state.chunk_total(s.name) for s in settings.sources
            )
    identity = store.identity
    store.close()
    if consistent:
        # A remote API's dimension is known from its first answer: without it recorded,
        # the seal could not be trusted and the next resync would load the shard.
        state.use_embedder(identity.model, identity.dimension)
        state.seal_store(seal(settings.qdrant, identity))


async def _open_store(
    settings: Settings, embedder: Embedder, rebuild: bool, create: bool, process: bool
) -> Store | None:
    """The collection for this embedder. One whose dimension is not known yet (a remote
    API never asked) takes it from a collection it built, or creates one with its first
    write; only a rebuild over another embedder's collection asks the API first. With
    `process`, an embedded shard runs in a process of its own (see store/process.py)."""
    if not embedder.dimension:
        built = open_store(settings.qdrant, None, create=False, process=process)
        if built is None:
            if not create:
                return None
            return PendingStore(settings.qdrant, embedder.model_id, process)
        if built.identity.model == embedder.model_id:
            embedder.dimension = built.identity.dimension
            return built
        built.close()
        if rebuild:
            await embedder.embed(["dimension probe"], "document")
    identity = Identity(embedder.model_id, embedder.dimension)
    return open_store(settings.qdrant, identity, rebuild, create, process)
