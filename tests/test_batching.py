"""The embedding batches: each text embedded once, and no vector held once it is written."""

import asyncio

import numpy as np

from syncd.chunking import Chunk, chunk_hash
from syncd.embedders.batching import Batcher


class Cache:
    """The vector cache as SQLite keeps it: by chunk hash."""

    def __init__(self) -> None:
        self.rows: dict[str, np.ndarray] = {}

    def vectors(self, hashes):
        return {h: self.rows[h] for h in hashes if h in self.rows}

    def add_vectors(self, vectors) -> None:
        self.rows.update(vectors)


class Embedder:
    model_id, dimension, max_batch, failing_since = "test:m", 4, 200, None

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def embed(self, texts, kind):
        self.texts += texts
        return np.eye(4, dtype=np.float32)[[len(t) % 4 for t in texts]]


def doc(name: str, *texts: str) -> tuple[str, list[Chunk]]:
    return name, [Chunk(t, chunk_hash(t)) for t in texts]


def run(use_cache: bool, waves: list[list[tuple[str, list[Chunk]]]], embedder: Embedder, cache):
    written: dict[str, list[np.ndarray]] = {}

    async def on_ready(ready, vectors):
        for name, chunks in ready:
            written[name] = [vectors[c.hash] for c in chunks]

    async def go() -> Batcher:
        batcher = Batcher(embedder, 200, 2, cache, on_ready, lambda d, r: None)
        for wave in waves:
            await batcher.add(wave, use_cache=use_cache)
            await batcher.flush()
            assert batcher._vectors == {}, "written documents' vectors are let go"
        return batcher

    asyncio.run(go())
    return written


def test_a_text_written_earlier_in_the_run_comes_from_the_cache_not_the_api():
    embedder, cache = Embedder(), Cache()
    waves = [[doc("a", "tide", "moon")], [doc("b", "moon", "sun")], [doc("c", "tide")]]
    written = run(True, waves, embedder, cache)
    assert sorted(embedder.texts) == ["moon", "sun", "tide"]
    assert np.array_equal(written["b"][0], written["a"][1])
    assert np.array_equal(written["c"][0], written["a"][0])
