"""Typed rows of the state database, as the rest of syncd sees them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import numpy as np


class DocRow(NamedTuple):
    """A tuple, not a dataclass: a reconcile reads one per document, and a million of them
    cost 0.5 s and 130 MB as tuples against 3 s and 400 MB as dataclasses."""

    source: str
    path: str
    size: int
    mtime_ns: int
    doc_hash: str | None
    chunk_count: int
    status: str
    error: str | None
    attempts: int
    synced_at: float


@dataclass(frozen=True)
class QueuedText:
    """The last text of a queue document, kept because a queue cannot be replayed.

    `text` is None once a delete was applied, so an older redelivered entry stays dead.
    """

    entry_id: str
    text: str | None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Synced:
    """A document whose points are in the store, to be recorded as done."""

    source: str
    path: str
    size: int
    mtime_ns: int
    doc_hash: str
    hashes: list[str]
    queued: QueuedText | None = None


@dataclass(frozen=True)
class StoredChunk:
    """One point of the store, as much as the state can learn from it."""

    source: str
    path: str
    chunk_index: int
    chunk_count: int
    chunk_hash: str
    doc_hash: str
    mtime_ns: int
    vector: np.ndarray


@dataclass(frozen=True)
class CopyProgress:
    next_offset: str | None
    copied: int
    #: When the copy began (set by its first save).
    started_at: float | None = None


@dataclass(frozen=True)
class SwitchProgress:
    """How far the index of `embedder_next` is built."""

    model: str
    #: Points of the active index copied (or found up to date) in this pass.
    done: int
    #: Chunks the state knows: what the active index holds.
    total: int
    started_at: float | None


@dataclass(frozen=True)
class SourceStatus:
    name: str
    documents: int
    chunks: int
    failed: list[DocRow]
    skipped: int
    pending: int
    last_sync: float | None
    #: Directories the last scan could not list → error ("" is the root).
    unlisted: dict[str, str] = field(default_factory=dict)
    held_deletions: list[str] = field(default_factory=list)
