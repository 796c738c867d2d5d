"""`syncd verify`: every point of the sources checked against the state and the files.

The store is read a page at a time (its vectors are never held, only their length); what
is kept is the state's expectation, one chunk hash per synced chunk, and the chunks seen.
Kinds of drift:

    missing       a chunk the state records has no point
    stray         a point of an unknown path, of a chunk index past the document's
                  chunks, or under an id that is not the chunk's (a duplicate)
    payload       text, chunk_hash, doc_hash, chunk_index or chunk_count disagree
    vector_size   the dense vector is not the embedder's dimension

Documents whose files changed since their last sync (or are gone, or new) are pending,
not drift: the next reconcile handles them. A repair deletes stray points by id and
rewrites each document with a missing or wrong point through the engine, so unchanged
chunk texts take their vectors from the cache and only texts without one are embedded.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from syncd import metrics
from syncd.config import FolderSource, RedisSource
from syncd.engine import Engine
from syncd.plan import rewrite_plan, text_hash
from syncd.sources import folder
from syncd.sources.folder import FileStat
from syncd.state import DocRow
from syncd.store import StoredPoint, point_id

log = structlog.get_logger()

KINDS = ("missing", "stray", "payload", "vector_size")
# Drifts listed one by one in a report; beyond this only counted.
MAX_LISTED = 100


@dataclass(frozen=True)
class Drift:
    kind: str
    source: str
    path: str
    detail: str
    point_id: str | None = None


@dataclass
class Audit:
    points: int = 0
    drift: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    listed: list[Drift] = field(default_factory=list)
    #: "source/path" of documents whose files changed since their last sync.
    pending: list[str] = field(default_factory=list)
    repaired: bool = False
    texts_embedded: int = 0
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not any(self.drift.values())

    def add(self, drift: Drift) -> None:
        self.drift[drift.kind] += 1
        if len(self.listed) < MAX_LISTED:
            self.listed.append(drift)


async def audit(
    engine: Engine, sources: list[FolderSource | RedisSource], repair: bool = False
) -> Audit:
    """Check every point of these sources; with `repair`, fix what is found."""
    started = time.monotonic()
    result = Audit()
    for source in sources:
        stray, broken, stats = await asyncio.to_thread(_check_source, engine, source, result)
        if repair and (stray or broken):
            engine.store.delete_points(stray)
            report = await engine.apply(rewrite_plan(engine.state, source, sorted(broken), stats))
            result.texts_embedded += report.texts_embedded
            result.repaired = True
    result.seconds = time.monotonic() - started
    for kind, count in result.drift.items():
        metrics.drift_points.labels(kind).set(count)
    log.info(
        "verify_finished",
        points=result.points,
        pending=len(result.pending),
        repaired=result.repaired,
        seconds=round(result.seconds, 2),
        **result.drift,
    )
    return result


def _check_source(
    engine: Engine, source: FolderSource | RedisSource, result: Audit
) -> tuple[list[str], set[str], dict[str, FileStat]]:
    """Stray point ids, paths to rewrite, and the files' stats (folder sources)."""
    name = source.name
    docs = engine.state.documents(name)
    hashes = engine.state.chunk_hashes(name)
    stats: dict[str, FileStat] = {}
    pending: set[str] = set()
    if isinstance(source, FolderSource):
        listing = folder.scan(source)
        stats = listing.files
        pending = _pending(docs, listing)
        result.pending += [f"{name}/{p}" for p in sorted(pending)]
    dimension = engine.embedder.dimension
    seen: set[tuple[str, int]] = set()
    stray: list[str] = []
    broken: set[str] = set()
    for point in engine.store.points(name):
        result.points += 1
        path = point.payload.get("path")
        if path in pending:
            continue
        drift = _check_point(name, point, docs.get(path), hashes.get(path), dimension, seen)
        if drift is None:
            continue
        result.add(drift)
        if drift.kind == "stray":
            stray.append(point.id)
            if path in hashes:
                broken.add(path)  # a stray may sit where a good point belongs
        else:
            broken.add(path)
    for path, chunk_hashes in hashes.items():
        if path in pending:
            continue
        for i in range(len(chunk_hashes)):
            if (path, i) not in seen:
                result.add(Drift("missing", name, path, f"chunk {i} has no point"))
                broken.add(path)
    return stray, broken, stats


def _check_point(
    source: str,
    point: StoredPoint,
    doc: DocRow | None,
    chunk_hashes: list[str] | None,
    dimension: int,
    seen: set[tuple[str, int]],
) -> Drift | None:
    p: dict[str, Any] = point.payload
    path, index = p.get("path"), p.get("chunk_index")
    if doc is None or not chunk_hashes or not isinstance(path, str):
        return Drift("stray", source, str(path), "no such document", point.id)
    if not isinstance(index, int) or not 0 <= index < len(chunk_hashes):
        return Drift("stray", source, path, f"chunk_index {index!r} out of range", point.id)
    if point.id != point_id(source, path, index):
        return Drift("stray", source, path, f"unexpected id for chunk {index}", point.id)
    seen.add((path, index))
    text = p.get("text")
    wrong = [
        name
        for name, ok in (
            ("chunk_hash", p.get("chunk_hash") == chunk_hashes[index]),
            ("text", isinstance(text, str) and text_hash(text) == chunk_hashes[index]),
            ("doc_hash", p.get("doc_hash") == doc.doc_hash),
            ("chunk_count", p.get("chunk_count") == len(chunk_hashes)),
        )
        if not ok
    ]
    if wrong:
        return Drift("payload", source, path, f"chunk {index}: {', '.join(wrong)}", point.id)
    if point.dimension != dimension:
        detail = f"chunk {index}: {point.dimension} dimensions, not {dimension}"
        return Drift("vector_size", source, path, detail, point.id)
    return None


def _pending(docs: dict[str, DocRow], listing: folder.Listing) -> set[str]:
    """Paths a reconcile would look at again: changed, new or gone since the last sync."""
    files = listing.files
    changed = {
        p
        for p, d in docs.items()
        if p in files and (d.size, d.mtime_ns) != (files[p].size, files[p].mtime_ns)
    }
    gone = {p for p in docs if p not in files and not listing.covers(p)}
    return changed | gone | (files.keys() - docs.keys())
