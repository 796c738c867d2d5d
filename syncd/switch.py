"""A new embedder without downtime: the index of `embedder_next`, built beside the active one.

The new index is filled from the active index's own points: each point's payload (with
its chunk text) and BM25 vector are copied as they are, and its dense vector is the next
embedder's for the chunk text, requested in full batches under that embedder's limits
and cached in SQLite apart from the active embedder's vectors (by chunk hash, so a text
repeated anywhere is embedded once). No file is read again.

A pass goes through the active index a page at a time in id order; where it has got to
is recorded after each page, so a pass stopped at any moment (kill -9 included) resumes
there. Meanwhile search keeps answering from the active index with the active embedder,
and syncs keep writing to the active index only. A point already copied and unchanged
is skipped, so once a pass reaches the end, a last pass with no sync in between (the
engine holds its write lock) copies only what changed during the first and deletes what
is gone; then the new index holds exactly the active one's points, and the switch
(`syncd.store.promote`) makes it the active one.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from syncd.config import EmbedderConfig, Settings
from syncd.embedders import Embedder, make_embedder, model_id
from syncd.state import CopyProgress, State
from syncd.store import (
    Identity,
    Record,
    Store,
    drop,
    next_index,
    open_store,
    promote,
    same_payload,
)

if TYPE_CHECKING:
    import numpy as np

log = structlog.get_logger(__name__)

# Points per page are as many texts as the next embedder takes in its concurrent
# requests, so each page embeds at full speed; within these bounds.
_MIN_PAGE, _MAX_PAGE = 64, 2048


class Switch:
    """The index of the next embedder, being built; `embedder` and `store` are its own."""

    def __init__(self, settings: Settings, state: State, config: EmbedderConfig) -> None:
        self.state = state
        self.config = config
        self.embedder: Embedder = make_embedder(config)
        self.model = self.embedder.model_id
        self.target = next_index(settings.qdrant, self.model)
        self.store: Store | None = None
        #: What the new index is built with, known once it exists.
        self.identity: Identity | None = None
        self.page = min(max(config.batch_size * config.max_concurrency, _MIN_PAGE), _MAX_PAGE)
        self._key = f"switch {self.model}"
        self.texts_embedded = 0

    async def start(self) -> None:
        """Ready the embedder and open what an earlier run built, if it is this embedder's."""
        await self.embedder.start()
        built = await asyncio.to_thread(open_store, self.target, None, create=False)
        if built is not None and built.identity.model != self.model:
            built.close()
            await asyncio.to_thread(drop, self.target)
            built = None
        if built is not None:
            self.embedder.dimension = built.identity.dimension
        self.store = built

    def close_store(self) -> Identity:
        """Close the new index (for its promotion); what it was built with."""
        if self.store is not None:
            self.identity = self.store.identity
            self.store.close()
            self.store = None
        return self.identity

    async def close(self) -> None:
        self.close_store()
        await self.embedder.aclose()

    # -- filling ----------------------------------------------------------------------------

    async def step(self, active: Store) -> bool:
        """Copy the next page of the pass; True once the pass has reached the end."""
        progress = self.state.copy_progress(self._key)
        if progress is None:
            progress = CopyProgress(None, 0)
            log.info("switch_started", model=self.model, target=self.target.collection)
        elif progress.next_offset is None and progress.copied:
            return True
        records, offset = await asyncio.to_thread(active.scroll, progress.next_offset, self.page)
        await self._copy(records)
        self.state.save_copy_progress(
            self._key, CopyProgress(offset, progress.copied + len(records))
        )
        return offset is None

    async def finish(self, active: Store) -> None:
        """The last pass, with no write to the active index in between: copy what changed
        since the first pass saw it and delete what is gone, then every point is there."""
        offset = None
        while True:
            records, offset = await asyncio.to_thread(active.scroll, offset, self.page)
            await self._copy(records)
            if offset is None:
                break
        if self.store is None:
            # Nothing to copy: the new index starts empty, with the embedder's dimension.
            if not self.embedder.dimension:
                await self.embedder.embed(["dimension probe"], "document")
            await self._store(self.embedder.dimension)
            return
        while True:
            built, offset = await asyncio.to_thread(self.store.scroll, offset, self.page)
            ids = [r.id for r in built]
            kept = {r.id for r in await asyncio.to_thread(active.retrieve, ids)}
            await asyncio.to_thread(self.store.delete_points, [i for i in ids if i not in kept])
            if offset is None:
                return

    async def _copy(self, records: list[Record]) -> None:
        # Points without a chunk text are not syncd's: there is nothing to embed them from.
        records = [r for r in records if isinstance(r.payload.get("text"), str)]
        if not records:
            return
        if self.store is not None:
            have = await asyncio.to_thread(self.store.retrieve, [r.id for r in records])
            copied = {r.id: r.payload for r in have}
            records = [r for r in records if not same_payload(copied.get(r.id), r.payload)]
        if not records:
            return
        texts = {r.payload.get("chunk_hash") or r.id: r.payload["text"] for r in records}
        vectors = self.state.next_vectors(texts)
        fresh = await self._embed({h: t for h, t in texts.items() if h not in vectors})
        vectors |= fresh
        copies = [
            Record(r.id, vectors[r.payload.get("chunk_hash") or r.id].tolist(), r.bm25, r.payload)
            for r in records
        ]
        store = await self._store(len(copies[0].dense))
        await asyncio.to_thread(store.upsert_records, copies)

    async def _embed(self, texts: dict[str, str]) -> dict[str, np.ndarray]:
        """Full batches, as many at once as the embedder allows; cached as they arrive."""
        size = min(self.config.batch_size, self.embedder.max_batch)
        hashes = list(texts)

        async def one(part: list[str]) -> dict[str, np.ndarray]:
            vectors = await self.embedder.embed([texts[h] for h in part], "document")
            fresh = dict(zip(part, vectors, strict=True))
            self.state.add_next_vectors(fresh)
            self.texts_embedded += len(fresh)
            return fresh

        parts = [hashes[i : i + size] for i in range(0, len(hashes), size)]
        out: dict[str, np.ndarray] = {}
        for fresh in await asyncio.gather(*(one(p) for p in parts)):
            out |= fresh
        return out

    async def _store(self, dimension: int) -> Store:
        """The new index, created by its first write (a remote API's dimension comes with
        its first answer)."""
        if self.store is None:
            identity = Identity(self.model, dimension)
            self.store = await asyncio.to_thread(open_store, self.target, identity)
            self.embedder.dimension = dimension
        return self.store


def active_embedder(settings: Settings, state: State) -> EmbedderConfig:
    """`embedder`, or `embedder_next` once the switch to it is done (the state's vectors
    are its) and the user has not yet moved it to `embedder`."""
    built = state.embedder()
    following = settings.embedder_next
    if following is None or built != model_id(following) or built == model_id(settings.embedder):
        return settings.embedder
    log.warning(
        "embedder_switched_earlier",
        model=built,
        hint="move the embedder_next section of the config to embedder",
    )
    return following


def other_embedder(settings: Settings, embedder: Embedder) -> EmbedderConfig | None:
    """Of `embedder` and `embedder_next`, the one that is not this embedder, if any."""
    configs = [c for c in (settings.embedder, settings.embedder_next) if c is not None]
    others = [c for c in configs if model_id(c) != embedder.model_id]
    return others[0] if others and len(others) < len(configs) else None


async def open_switch(settings: Settings, state: State, active_model: str) -> Switch | None:
    """The build of `embedder_next`'s index, resumed where it stopped; None if there is
    nothing to build. An index built for an embedder no longer configured is removed."""
    config = settings.embedder_next
    wanted = model_id(config) if config is not None else None
    if wanted == active_model:
        wanted = None
    recorded = state.next_embedder()
    if recorded is not None and recorded != wanted:
        await asyncio.to_thread(drop, next_index(settings.qdrant, recorded))
        log.info("switch_abandoned", model=recorded)
    state.use_next_embedder(wanted)
    if wanted is None:
        return None
    switch = Switch(settings, state, config)
    await switch.start()
    return switch


def finish_interrupted_switch(settings: Settings, state: State) -> None:
    """A switch that began (its index complete) but a crash cut short is finished first."""
    model = state.switching()
    if model is None:
        return
    promote(settings.qdrant, next_index(settings.qdrant, model))
    store = open_store(settings.qdrant, None, create=False)
    if store is not None:
        store.close()
    state.finish_switch(store.identity.dimension if store is not None else 0)
    log.warning("embedder_switched", model=model, finished_after="an interruption")
