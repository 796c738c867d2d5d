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

from syncd.config import FolderSource, RedisSource
from syncd.errors import ConfigError, SourceUnavailable
from syncd.sources import folder
from syncd.sources.folder import FileStat
from syncd.state import DocRow, QueuedText, State
from syncd.store import Store


@dataclass(frozen=True, slots=True)  # slots: a first sync plans one per file
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
    #: A whole folder was listed, so `unlisted` and `held` replace what was recorded.
    full: bool = False
    #: Directories (or files) that could not be listed → error; their documents are kept.
    unlisted: dict[str, str] = field(default_factory=dict)
    #: Deletions held back by the mass-deletion guard, until `--allow-delete`.
    held: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.upserts) + len(self.deletes)

    def summary(self) -> dict[str, object]:
        return {
            "source": self.source,
            "add": [u.path for u in self.upserts if u.known is None],
            "update": [u.path for u in self.upserts if u.known is not None],
            "delete": [d.path for d in self.deletes],
            "held": self.held,
            "unlisted": self.unlisted,
            "unchanged": self.unchanged,
        }


def folder_plan(
    state: State,
    store: Store | None,
    source: FolderSource,
    force: bool = False,
    paths: set[str] | None = None,
    retry_failed: bool = True,
    allow_delete: bool = False,
) -> Plan:
    """The whole source, or just these paths (the daemon's hints from folder events,
    where the state alone is trusted for the store's contents).

    An unchanged document that failed is retried at once with `retry_failed` (a user's
    resync), else after `retry_delay`, so poison files cost little.

    A listing that fails never deletes: nothing under a directory that could not be
    listed is deleted, a root that is missing or holds no included file while documents
    are known raises SourceUnavailable, and more deletions than `max_delete_fraction`
    are held; `allow_delete` confirms the last two.
    """
    if paths is None:
        listing = folder.scan(source)
        in_store = _points_in_store(store, state, source.name)
    else:
        listing = folder.stat_paths(source, paths)
        if not source.path.is_dir():
            listing.unlisted[""] = "No such directory"
        in_store = None
    # Rows come in path order, so the first one (if any) says whether anything is known.
    known = next(state.each_document(source.name, paths), None) is not None or bool(in_store)
    if allow_delete:
        listing.unlisted.pop("", None)  # confirmed: a missing root means every file is gone
    else:
        _check_available(source, listing, full=paths is None, known=known)
    plan = Plan(source.name, force=force, full=paths is None, unlisted=listing.unlisted)
    # One pass over the state, a row at a time (a million documents need not be objects at
    # once), taking each listed file it knows out of `new`: what is left there is new.
    new, gone = listing.files, []
    for doc in state.each_document(source.name, paths):
        stat = new.pop(doc.path, None)
        points = doc.chunk_count if in_store is None else in_store.pop(doc.path, 0)
        if stat is None:
            gone.append(doc.path)
        elif force or _needs_sync(doc, stat, points, retry_failed):
            plan.upserts.append(Upsert(source.name, doc.path, doc, points, stat=stat))
        else:
            plan.unchanged += 1
    # Points of paths the state has no row for: those listed are rewritten, the others gone.
    unrecorded = in_store or {}
    for path, stat in new.items():
        plan.upserts.append(Upsert(source.name, path, None, unrecorded.get(path, 0), stat=stat))
    plan.upserts.sort(key=lambda u: u.path)
    gone += unrecorded.keys() - new.keys()
    gone = sorted(p for p in gone if not listing.covers(p))
    if not allow_delete and _too_many(len(gone), state, source):
        plan.held = gone
    else:
        plan.deletes = [Delete(source.name, p) for p in gone]
    return plan


# The mass-deletion guard applies to sources holding at least this many documents.
GUARDED_SOURCE_DOCUMENTS = 20


def _check_available(
    source: FolderSource, listing: folder.Listing, full: bool, known: bool
) -> None:
    """A root that cannot be listed, or (in a full scan) lists no included file, looks
    like an unmounted share, not like a folder whose every file was deleted."""
    if "" in listing.unlisted and not known:
        raise ConfigError(
            f"sources.{source.name}.path: {source.path} cannot be listed ({listing.unlisted['']})"
        )
    if not known:
        return
    if "" in listing.unlisted:
        why = f"cannot be listed ({listing.unlisted['']})"
    elif full and not listing.files and not listing.unlisted:
        why = "holds no included file"
    else:
        return
    raise SourceUnavailable(
        f"source {source.name}: the folder {source.path} {why}, though documents from it "
        "are synced; nothing was deleted (an unmounted share looks like this). If it was "
        f"emptied on purpose: syncd resync --source {source.name} --allow-delete",
        hint="mount the folder again, or confirm its deletions as above",
    )


def _too_many(deletions: int, state: State, source: FolderSource) -> bool:
    known = state.document_count(source.name)
    return (
        known >= GUARDED_SOURCE_DOCUMENTS
        and source.max_delete_fraction < 1.0
        and deletions > source.max_delete_fraction * known
    )


def queue_plan(
    state: State, source: str, upserts: dict[str, QueuedText], deletes: dict[str, str]
) -> Plan:
    """Queue entries (the newest per document): path → text, and path → entry of a delete.

    A text and metadata the store already holds write nothing. A crash may have left
    points the state never recorded, so every upsert trims after writing.
    """
    known = state.documents(source, upserts)
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
    plan.upserts = _from_kept_texts(state, source, docs, broken)
    plan.unchanged = len(expected) - len(broken)
    return plan


def rewrite_plan(
    state: State, source: FolderSource | RedisSource, paths: list[str], stats: dict[str, FileStat]
) -> Plan:
    """Write these documents' points again (verify found them wrong): from the file for a
    folder, from the kept text for a queue; unchanged chunk texts come from the cache."""
    docs = state.documents(source.name)
    if isinstance(source, RedisSource):
        return Plan(source.name, upserts=_from_kept_texts(state, source.name, docs, paths))
    upserts = [
        Upsert(source.name, p, docs.get(p), None, stat=stats[p]) for p in paths if p in stats
    ]
    return Plan(source.name, upserts=upserts)


def _from_kept_texts(
    state: State, source: str, docs: dict[str, DocRow], paths: list[str]
) -> list[Upsert]:
    """A queue cannot be replayed: its documents are rewritten from their kept texts."""
    kept = state.queued(source, paths)
    return [
        Upsert(source, p, docs.get(p), None, queued=kept[p])
        for p in paths
        if p in kept and kept[p].text is not None
    ]


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def expected_points(docs: dict[str, DocRow]) -> dict[str, int]:
    """Points per path the state promises: a document that failed because it could not
    be read keeps the chunks it had."""
    return {p: d.chunk_count for p, d in docs.items() if d.chunk_count}


def _points_in_store(store: Store | None, state: State, source: str) -> dict[str, int] | None:
    """Points per path as the store holds them; None when their total is what the state
    expects, so its own counts stand.

    Asking per path (a facet) costs ~30 us a point, so it is asked only when the total
    differs from what the state expects: a lost state file, points deleted by hand.
    A crash needs no such check: its documents still differ from the state on disk.
    """
    if store is None or store.count(source) == state.chunk_total(source):
        return None
    return store.chunk_counts(source)


def _needs_sync(doc: DocRow, stat: FileStat, points: int, retry_failed: bool) -> bool:
    if (doc.size, doc.mtime_ns) != (stat.size, stat.mtime_ns) or points != doc.chunk_count:
        return True
    if doc.status == "failed":
        return retry_failed or time.time() >= doc.synced_at + retry_delay(doc.attempts)
    return False


def retry_delay(attempts: int) -> float:
    """Seconds before an unchanged failed document is tried again: 1 min, doubling, 1 h."""
    return min(60.0 * 2 ** max(attempts - 1, 0), 3600.0)
