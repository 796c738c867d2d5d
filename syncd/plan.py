"""What to write and what to delete: for a folder, a batch of queue entries, or a repair.

A plan compares what the source says now with the SQLite state and, where the totals
disagree, with the store's own per-path point counts, so points the state does not know
of (a crash between upsert and commit, a lost state file) are found and fixed. Plans
change nothing; `Engine.apply` carries them out.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from syncd.config import FolderSource
from syncd.sources import folder
from syncd.sources.folder import FileStat
from syncd.state import DocRow, QueuedText, State
from syncd.store import Store


@dataclass(frozen=True)
class Upsert:
    """One document to (re)write: a file to read, or a text a queue delivered."""

    source: str
    path: str
    #: What the state knows of it (None: a new document).
    known: DocRow | None
    #: Points the store holds for the path now; None: unknown, so trim after writing.
    points_before: int | None
    #: A folder document: its size and mtime when listed.
    stat: FileStat | None = None
    #: A queue document: the text, metadata and entry that carried it.
    queued: QueuedText | None = None


@dataclass(frozen=True)
class Delete:
    source: str
    path: str
    #: A queue delete records its entry, so an older redelivered upsert stays dead.
    entry_id: str | None = None


@dataclass
class Plan:
    source: str
    upserts: list[Upsert] = field(default_factory=list)
    deletes: list[Delete] = field(default_factory=list)
    unchanged: int = 0
    #: Re-extract, re-chunk and re-embed even what looks unchanged.
    force: bool = False

    @property
    def size(self) -> int:
        return len(self.upserts) + len(self.deletes)

    def summary(self) -> dict[str, object]:
        return {
            "source": self.source,
            "add": [u.path for u in self.upserts if u.known is None],
            "update": [u.path for u in self.upserts if u.known is not None],
            "delete": [d.path for d in self.deletes],
            "unchanged": self.unchanged,
        }


def folder_plan(
    state: State,
    store: Store | None,
    source: FolderSource,
    force: bool = False,
    paths: set[str] | None = None,
    retry_failed: bool = True,
) -> Plan:
    """The whole source, or just these paths (the daemon's hints from folder events,
    where the state alone is trusted for the store's contents).

    An unchanged document that failed is retried at once with `retry_failed` (a user's
    resync), else after `retry_delay`, so poison files cost little.
    """
    docs = state.documents(source.name)
    if paths is None:
        stats = folder.scan(source)
        in_store = _points_in_store(store, source.name, docs)
    else:
        stats = folder.stat_paths(source, paths)
        docs = {p: d for p, d in docs.items() if p in paths}
        in_store = expected_points(docs)
    plan = Plan(source.name, force=force)
    for path in sorted(stats):
        doc, points = docs.get(path), in_store.get(path, 0)
        if doc is None or force or _needs_sync(doc, stats[path], points, retry_failed):
            plan.upserts.append(Upsert(source.name, path, doc, points, stat=stats[path]))
        else:
            plan.unchanged += 1
    gone = sorted((docs.keys() | in_store.keys()) - stats.keys())
    plan.deletes = [Delete(source.name, p) for p in gone]
    return plan


def queue_plan(
    state: State, source: str, upserts: dict[str, QueuedText], deletes: dict[str, str]
) -> Plan:
    """Queue entries (the newest per document): path → text, and path → entry of a delete.

    A text and metadata the store already holds write nothing. A crash may have left
    points the state never recorded, so every upsert trims after writing.
    """
    known = state.documents(source)
    kept = state.queued(source, upserts)
    plan = Plan(source, deletes=[Delete(source, p, e) for p, e in deletes.items()])
    for path, q in upserts.items():
        doc, last = known.get(path), kept.get(path)
        same = doc is not None and doc.status == "done" and doc.doc_hash == text_hash(q.text)
        if same and last is not None and last.metadata == q.metadata:
            plan.unchanged += 1
        else:
            plan.upserts.append(Upsert(source, path, doc, None, queued=q))
    return plan


def repair_plan(state: State, store: Store, source: str) -> Plan:
    """A queue source's resync: re-check the store against SQLite; no queue is read.

    Points of documents the state does not know are deleted; documents whose points are
    missing or too many are rewritten from their kept text.
    """
    docs = state.documents(source)
    expected = expected_points(docs)
    in_store = store.chunk_counts(source)
    plan = Plan(source, deletes=[Delete(source, p) for p in sorted(in_store.keys() - expected)])
    broken = [p for p, n in expected.items() if in_store.get(p, 0) != n]
    kept = state.queued(source, broken)
    for path in broken:
        q = kept.get(path)
        if q is not None and q.text is not None:
            plan.upserts.append(Upsert(source, path, docs[path], None, queued=q))
    plan.unchanged = len(expected) - len(broken)
    return plan


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def expected_points(docs: dict[str, DocRow]) -> dict[str, int]:
    return {p: d.chunk_count for p, d in docs.items() if d.status == "done" and d.chunk_count}


def _points_in_store(store: Store | None, source: str, docs: dict[str, DocRow]) -> dict[str, int]:
    """Points per path as the store holds them.

    Asking per path (a facet) costs ~30 us a point, so it is asked only when the total
    differs from what the state expects: a lost state file, points deleted by hand.
    A crash needs no such check: its documents still differ from the state on disk.
    """
    expected = expected_points(docs)
    if store is None or store.count(source) == sum(expected.values()):
        return expected
    return store.chunk_counts(source)


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
