"""State rebuilt from the store, so a lost or unreadable state file costs no embedding.

Every point carries its document's path, hash and chunk count, its chunk's hash and
its vector: enough to restore the documents, their chunks and the vector cache. What
the store cannot tell (a file's size, a queue entry's id and full text) is left for
the next plan to learn: it reads each file once and compares hashes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from syncd.state import State, StoredChunk
from syncd.store import Record, Store

log = structlog.get_logger(__name__)

_NEEDED = ("source", "path", "chunk_index", "chunk_count", "chunk_hash", "doc_hash")


@dataclass(frozen=True)
class Rebuilt:
    documents: int
    chunks: int
    #: Where an unreadable state file was moved aside; None when the file was missing.
    moved_aside: Path | None

    def describe(self) -> str:
        why = (
            f"the state file was unreadable and moved to {self.moved_aside}"
            if self.moved_aside
            else "the state file was missing"
        )
        return (
            f"state rebuilt from the store ({why}): {self.documents} documents, "
            f"{self.chunks} chunk vectors; unchanged files will not be embedded again"
        )


def rebuild_state(
    state: State, store: Store | None, sources: set[str], model_id: str, moved_aside: Path | None
) -> Rebuilt | None:
    """Restore a state never used to sync from the store's points of these sources.

    A state that has recorded an embedder is in use and left alone. The restore is one
    transaction that records the embedder last, so an interrupted one runs again.
    """
    if state.embedder() is not None:
        return None
    held = store.count_by_source() if store is not None else {}
    if not any(held.get(s) for s in sources):
        return Rebuilt(0, 0, moved_aside) if moved_aside else None
    documents, chunks = state.restore(_chunks(store, sources), model_id)
    rebuilt = Rebuilt(documents, chunks, moved_aside)
    log.warning(
        "state_rebuilt",
        documents=documents,
        chunks=chunks,
        moved_aside=str(moved_aside) if moved_aside else None,
    )
    return rebuilt


def _chunks(store: Store, sources: set[str]) -> Iterator[list[StoredChunk]]:
    offset = None
    while True:
        records, offset = store.scroll(offset)
        yield [c for r in records if (c := _chunk(r, sources)) is not None]
        if offset is None:
            return


def _chunk(r: Record, sources: set[str]) -> StoredChunk | None:
    import numpy as np  # here: every command opens the engine, few rebuild a state

    p = r.payload
    # Points another tool wrote into the collection teach nothing about syncd's documents.
    if p.get("source") not in sources or any(p.get(k) is None for k in _NEEDED):
        return None
    return StoredChunk(
        source=p["source"],
        path=p["path"],
        chunk_index=p["chunk_index"],
        chunk_count=p["chunk_count"],
        chunk_hash=p["chunk_hash"],
        doc_hash=p["doc_hash"],
        mtime_ns=round(p.get("mtime", 0) * 1e9),
        vector=np.asarray(r.dense, dtype=np.float32),
    )
