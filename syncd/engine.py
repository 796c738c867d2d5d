"""Plan and apply a reconcile of one source with Qdrant; shared by `run` and `resync`.

Order of writes, so that a crash at any moment leaves nothing the next run cannot repair:
  1. new vectors go to the SQLite vector cache as soon as they exist (never embedded twice);
  2. a document's points are upserted under deterministic ids, then its surplus chunks
     are deleted by filter;
  3. only then is the document recorded as synced in SQLite.
A plan also compares the store's own per-path point counts with the state, so points the
state does not know of (a crash between 2 and 3, a lost state file) are found and fixed.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import structlog

from syncd import metrics
from syncd.chunking import Chunk, chunk_text
from syncd.config import FolderSource, RedisSource, Settings
from syncd.embedders import Embedder, make_embedder
from syncd.embedders.batching import Batcher
from syncd.errors import DocumentError, UnsupportedFormat
from syncd.extract import Extracted, extract
from syncd.sources import folder
from syncd.sources.folder import FileStat
from syncd.state import DocRow, State, Synced
from syncd.store import Hit, Identity, PointData, Store, open_store, point_id

log = structlog.get_logger()

# Documents read and extracted at once (threads; kreuzberg and file reads release the GIL).
EXTRACT_CONCURRENCY = 4


@dataclass
class Plan:
    source: str
    add: list[str]
    update: list[str]
    delete: list[str]
    unchanged: int
    stats: dict[str, FileStat] = field(repr=False)
    #: Points per path as the store holds them.
    points: dict[str, int] = field(repr=False)

    def summary(self) -> dict[str, object]:
        return {
            "source": self.source,
            "add": self.add,
            "update": self.update,
            "delete": self.delete,
            "unchanged": self.unchanged,
        }


@dataclass
class Report:
    added: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    failed: int = 0
    skipped: int = 0
    texts_embedded: int = 0
    seconds: float = 0.0
    failures: list[dict[str, str]] = field(default_factory=list)

    def merge(self, other: Report) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


@dataclass
class Progress:
    """Live counters for a progress display; the engine only increments them."""

    documents_total: int = 0
    documents_done: int = 0
    texts_embedded: int = 0
    listeners: list[Callable[[Progress], None]] = field(default_factory=list)

    def advance(self, documents: int = 0, texts: int = 0) -> None:
        self.documents_done += documents
        self.texts_embedded += texts
        for listener in self.listeners:
            listener(self)


@dataclass
class _Prepared:
    source: str
    path: str
    stat: FileStat
    doc_hash: str
    doc: Extracted
    chunks: list[Chunk]
    is_new: bool
    #: Points the store holds for the path now; None: unknown, so trim after writing.
    points_before: int | None = None
    #: Queue documents: the stream entry, and the text kept because a queue cannot replay.
    entry_id: str | None = None
    body: str | None = None


@dataclass(frozen=True)
class QueuedDocument:
    """One upsert from a queue: the text and metadata the message carried."""

    text: str
    metadata: dict[str, Any]
    entry_id: str


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

    # -- planning -------------------------------------------------------------------------

    def plan(
        self,
        source: FolderSource,
        force: bool = False,
        paths: set[str] | None = None,
        retry_failed: bool = True,
    ) -> Plan:
        """What to add, update and delete: of the whole source, or of just these paths
        (the daemon's hints from folder events, where the state alone is trusted).

        An unchanged document that failed is retried at once with `retry_failed` (a user's
        resync), else with a growing delay (`retry_delay`), so poison files cost little.
        """
        docs = self.state.documents(source.name)
        if paths is None:
            stats = folder.scan(source)
            in_store = self._points_in_store(source.name, docs)
        else:
            stats = folder.stat_paths(source, paths)
            docs = {p: d for p, d in docs.items() if p in paths}
            in_store = _expected_points(docs)
        add, update = [], []
        unchanged = 0
        for path, stat in stats.items():
            doc = docs.get(path)
            if doc is None:
                add.append(path)
            elif force or _needs_sync(doc, stat, in_store.get(path, 0), retry_failed):
                update.append(path)
            else:
                unchanged += 1
        delete = sorted((docs.keys() | in_store.keys()) - stats.keys())
        return Plan(source.name, sorted(add), sorted(update), delete, unchanged, stats, in_store)

    async def search(self, text: str, limit: int, source: str | None) -> list[Hit]:
        if self.store is None:
            return []
        (vector,) = await self.embedder.embed([text], "query")
        return self.store.search(vector, limit, source)

    def _points_in_store(self, source: str, docs: dict[str, DocRow]) -> dict[str, int]:
        """Points per path as the store holds them.

        Asking per path (a facet) costs ~30 us a point, so it is asked only when the total
        differs from what the state expects: a lost state file, points deleted by hand.
        A crash needs no such check: its documents still differ from the state on disk.
        """
        if self.store is None:
            return {}
        expected = _expected_points(docs)
        if self.store.count(source) == sum(expected.values()):
            return expected
        return self.store.chunk_counts(source)

    # -- applying -------------------------------------------------------------------------

    async def resync(
        self, source: FolderSource | RedisSource, force: bool = False, retry_failed: bool = True
    ) -> Report:
        """A full reconcile: of the files for a folder, of the store for a queue."""
        if isinstance(source, RedisSource):
            return await self.repair_queued(source.name)
        return await self.reconcile(source, force, retry_failed=retry_failed)

    async def reconcile(
        self,
        source: FolderSource,
        force: bool = False,
        paths: set[str] | None = None,
        retry_failed: bool = True,
    ) -> Report:
        """Bring the source (or these paths of it) in line with Qdrant.

        Stops taking new documents once `stopping` is set; what is already read is
        finished, so a shutdown waits for at most one round of embedding batches.
        """
        started = time.monotonic()
        plan = self.plan(source, force, paths, retry_failed)
        self.state.set_pending(source.name, len(plan.add) + len(plan.update) + len(plan.delete))
        self.progress.documents_total += len(plan.add) + len(plan.update) + len(plan.delete)
        log.info(
            "reconcile_planned",
            source=source.name,
            add=len(plan.add),
            update=len(plan.update),
            delete=len(plan.delete),
            unchanged=plan.unchanged,
        )
        report = Report(unchanged=plan.unchanged)
        self._delete(source.name, plan.delete, report)
        known = self.state.documents(source.name)
        todo = plan.add + plan.update
        async with self._batching(report) as batcher:
            # Files are read and extracted a few at a time, off the event loop.
            for done in range(0, len(todo), EXTRACT_CONCURRENCY):
                if self.stopping.is_set():
                    self.state.set_pending(source.name, len(todo) - done)
                    break
                window = todo[done : done + EXTRACT_CONCURRENCY]
                prepared = await asyncio.gather(
                    *(self._prepare(source, plan, p, known.get(p), force, report) for p in window)
                )
                for p in prepared:
                    if p is not None:
                        await batcher.add(p, p.chunks, use_cache=not force)
        if not self.stopping.is_set():
            self.state.set_pending(source.name, 0, synced=True)
        report.seconds = time.monotonic() - started
        log.info("reconcile_finished", source=source.name, **_counts(report))
        return report

    async def apply_queued(
        self,
        source: str,
        upserts: dict[str, QueuedDocument],
        deletes: dict[str, str],
        repair: bool = False,
    ) -> Report:
        """Apply documents from a queue: path → upsert, and path → entry id of a delete.

        Text and metadata unchanged since the last applied entry embed and write nothing
        (unless `repair`); every chunk whose text is known reuses its cached vector.
        """
        started = time.monotonic()
        report = Report()
        for path, entry_id in deletes.items():
            self.store.delete_documents(source, [path])
            self.state.forget(source, [path], entry_id)
            report.deleted += 1
        known = self.state.documents(source)
        kept = self.state.queued(source, upserts)
        async with self._batching(report) as batcher:
            for path, q in upserts.items():
                prepared = self._prepare_queued(
                    source, path, q, known.get(path), kept.get(path), repair
                )
                if prepared is None:
                    report.unchanged += 1
                else:
                    await batcher.add(prepared, prepared.chunks)
        report.seconds = time.monotonic() - started
        return report

    def _prepare_queued(
        self,
        source: str,
        path: str,
        q: QueuedDocument,
        doc: DocRow | None,
        kept: tuple[str, str | None, dict] | None,
        repair: bool,
    ) -> _Prepared | None:
        """None when the text and metadata are what the store already holds."""
        data = q.text.encode("utf-8")
        doc_hash = hashlib.sha256(data).hexdigest()
        same = doc is not None and doc.status == "done" and doc.doc_hash == doc_hash
        if same and not repair and kept is not None and kept[2] == q.metadata:
            return None
        fmt = q.metadata.get("format")
        title = q.metadata.get("title")
        extracted = Extracted(
            text=q.text,
            format=fmt if isinstance(fmt, str) and fmt.startswith("text/") else "text/plain",
            title=title if isinstance(title, str) else None,
            metadata=q.metadata,
        )
        chunking = self.settings.chunking
        chunks = chunk_text(
            q.text, chunking.max_chars, chunking.overlap_chars, extracted.is_markdown
        )
        # A crash may have left points of a text the state never recorded: always trim.
        return _Prepared(
            source,
            path,
            FileStat(len(data), 0),
            doc_hash,
            extracted,
            chunks,
            doc is None,
            points_before=None,
            entry_id=q.entry_id,
            body=q.text,
        )

    async def repair_queued(self, source: str) -> Report:
        """`resync` of a queue source: re-check the store against SQLite, read no queue."""
        docs = self.state.documents(source)
        expected = _expected_points(docs)
        in_store = self.store.chunk_counts(source)
        strays = sorted(in_store.keys() - expected.keys())
        self.store.delete_documents(source, strays)
        kept = self.state.queued(source)
        broken = [p for p, n in expected.items() if in_store.get(p, 0) != n]
        upserts = {
            p: QueuedDocument(kept[p][1], kept[p][2], kept[p][0])
            for p in broken
            if p in kept and kept[p][1] is not None
        }
        report = await self.apply_queued(source, upserts, {}, repair=True)
        report.deleted += len(strays)
        report.unchanged += len(expected) - len(broken)
        self.state.set_pending(source, 0, synced=True)
        log.info("repair_finished", source=source, **_counts(report))
        return report

    def _delete(self, source: str, paths: list[str], report: Report) -> None:
        for i in range(0, len(paths), 1000):
            part = paths[i : i + 1000]
            self.store.delete_documents(source, part)
            self.state.forget(source, part)
            report.deleted += len(part)
            self.progress.advance(documents=len(part))

    async def _prepare(
        self,
        source: FolderSource,
        plan: Plan,
        path: str,
        doc: DocRow | None,
        force: bool,
        report: Report,
    ) -> _Prepared | None:
        """Read, hash, extract and chunk one file; record it as failed or skipped if it must be."""
        stat = plan.stats[path]
        if stat.size > source.max_file_bytes:
            self._problem(
                source.name,
                path,
                stat,
                "skipped",
                f"larger than max_file_bytes ({stat.size} > {source.max_file_bytes})",
                report,
            )
            return None
        try:
            data = await asyncio.to_thread(folder.read, source, path)
        except FileNotFoundError:
            # Gone since the scan: it is no longer a current document.
            self._delete(source.name, [path], report)
            return None
        except OSError as e:
            self._problem(source.name, path, stat, "failed", f"unreadable: {e.strerror}", report)
            return None
        doc_hash = hashlib.sha256(data).hexdigest()
        if (
            not force
            and doc is not None
            and doc.status == "done"
            and doc.doc_hash == doc_hash
            and plan.points.get(path, 0) == doc.chunk_count
        ):
            self.state.touch(source.name, path, stat.size, stat.mtime_ns)
            report.unchanged += 1
            self.progress.advance(documents=1)
            return None
        try:
            # A runaway extraction is abandoned (its thread finishes in the background).
            extracted, chunks = await asyncio.wait_for(
                asyncio.to_thread(
                    self._extract_and_chunk, path, data, source.ocr_language if source.ocr else None
                ),
                timeout=source.extract_timeout_seconds,
            )
        except UnsupportedFormat as e:
            self._problem(source.name, path, stat, "skipped", str(e), report)
            return None
        except DocumentError as e:
            self._problem(source.name, path, stat, "failed", str(e), report)
            return None
        except TimeoutError:
            reason = f"extraction took longer than {source.extract_timeout_seconds:g}s"
            self._problem(source.name, path, stat, "failed", reason, report)
            return None
        return _Prepared(
            source.name,
            path,
            stat,
            doc_hash,
            extracted,
            chunks,
            doc is None,
            points_before=plan.points.get(path, 0),
        )

    def _extract_and_chunk(
        self, path: str, data: bytes, ocr_language: str | None
    ) -> tuple[Extracted, list[Chunk]]:
        extracted = extract(path, data, ocr_language)
        chunking = self.settings.chunking
        chunks = chunk_text(
            extracted.text,
            chunking.max_chars,
            chunking.overlap_chars,
            extracted.is_markdown,
            extracted.paged,
        )
        return extracted, chunks

    def _problem(
        self, source: str, path: str, stat: FileStat, status: str, reason: str, report: Report
    ) -> None:
        self.store.delete_documents(source, [path])
        self.state.record_problem(source, path, stat.size, stat.mtime_ns, status, reason)
        if status == "failed":
            report.failed += 1
            report.failures.append({"source": source, "path": path, "reason": reason})
            log.warning("document_failed", source=source, path=path, reason=reason)
        else:
            report.skipped += 1
            log.info("document_skipped", source=source, path=path, reason=reason)
        self.progress.advance(documents=1)

    @asynccontextmanager
    async def _batching(self, report: Report) -> AsyncIterator[Batcher[_Prepared]]:
        """Embedding batches shared by every document of one reconcile; flushed at the end,
        abandoned (requests cancelled) if the reconcile fails."""
        batcher: Batcher[_Prepared] = Batcher(
            self.embedder,
            self.settings.embedder.batch_size,
            self.settings.embedder.max_concurrency,
            self.state,
            on_ready=lambda ready, vectors: self._write(ready, vectors, report),
            on_rejected=lambda p, reason: self._problem(
                p.source, p.path, p.stat, "failed", reason, report
            ),
            on_embedded=lambda n: self.progress.advance(texts=n),
        )
        try:
            yield batcher
            await batcher.flush()
        finally:
            batcher.reset()
            report.texts_embedded += batcher.texts_embedded

    def _write(
        self,
        ready: list[tuple[_Prepared, list[Chunk]]],
        vectors: dict[str, np.ndarray],
        report: Report,
    ) -> None:
        """Points first (idempotent), surplus points next, the state last."""
        points = [point for p, _ in ready for point in self._points(p, vectors)]
        for i in range(0, len(points), 1000):
            self.store.upsert(points[i : i + 1000])
        for p, _ in ready:
            if p.points_before is None or p.points_before > len(p.chunks):
                self.store.trim(p.source, p.path, len(p.chunks))
        self.state.record_synced(
            [
                Synced(
                    p.source,
                    p.path,
                    p.stat.size,
                    p.stat.mtime_ns,
                    p.doc_hash,
                    [c.hash for c in p.chunks],
                    (p.entry_id, p.body, p.doc.metadata) if p.entry_id else None,
                )
                for p, _ in ready
            ]
        )
        report.added += sum(p.is_new for p, _ in ready)
        report.updated += sum(not p.is_new for p, _ in ready)
        self.progress.advance(documents=len(ready))
        metrics.documents_synced.inc(len(ready))

    def _points(self, p: _Prepared, vectors: dict[str, np.ndarray]) -> list[PointData]:
        base = {
            "source": p.source,
            "path": p.path,
            "chunk_count": len(p.chunks),
            "doc_hash": p.doc_hash,
            "metadata": p.doc.metadata,
            "format": p.doc.format,
        }
        if p.entry_id is None:
            base["mtime"] = p.stat.mtime_ns / 1e9
        if p.doc.title:
            base["title"] = p.doc.title
        return [
            PointData(
                point_id(p.source, p.path, i),
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


def _expected_points(docs: dict[str, DocRow]) -> dict[str, int]:
    return {p: d.chunk_count for p, d in docs.items() if d.status == "done" and d.chunk_count}


def _needs_sync(doc: DocRow, stat: FileStat, points: int, retry_failed: bool) -> bool:
    if (doc.size, doc.mtime_ns) != (stat.size, stat.mtime_ns):
        return True
    if doc.status == "failed":
        due = time.time() >= doc.synced_at + retry_delay(doc.attempts)
        return bool(points) or retry_failed or due
    return points != (doc.chunk_count if doc.status == "done" else 0)


def retry_delay(attempts: int) -> float:
    """Seconds before an unchanged failed document is tried again: 1 min, doubling, 1 h."""
    return min(60.0 * 2 ** max(attempts - 1, 0), 3600.0)


def _counts(report: Report) -> dict[str, object]:
    return {k: v for k, v in asdict(report).items() if k != "failures"}


@asynccontextmanager
async def opened(
    settings: Settings,
    rebuild: bool = False,
    create: bool = True,
    progress: Progress | None = None,
    embedder: Embedder | None = None,
) -> AsyncIterator[Engine]:
    """State, embedder and store for one command, closed in reverse order however it ends.

    With `create` false a missing collection is not made (`engine.store` is None then).
    An `embedder` passed in is the caller's to close.
    """
    state = State(settings.state.path)
    own = store = None
    try:
        if embedder is None:
            embedder = own = make_embedder(settings.embedder)
            await embedder.start()
        state.use_embedder(embedder.model_id)
        identity = Identity(embedder.model_id, embedder.dimension)
        store = open_store(settings.qdrant, identity, rebuild=rebuild, create=create)
        yield Engine(settings, state, store, embedder, progress)
    finally:
        if store is not None:
            store.close()
        if own is not None:
            await own.aclose()
        state.close()
