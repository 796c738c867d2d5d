"""Qdrant Edge and a Qdrant server (qdrant-client's in-process mode) behave the same."""

import json

import numpy as np
import pytest

from syncd.config import Qdrant
from syncd.errors import StoreMismatch
from syncd.store import Identity, PointData, SearchQuery, open_store, point_id

IDENTITY = Identity("local:test", 4)


@pytest.fixture(params=["edge", "server"])
def config(request, tmp_path) -> Qdrant:
    if request.param == "edge":
        return Qdrant(path=tmp_path / "q", collection="c")
    return Qdrant(path=None, url=":memory:", collection="c")


def vec(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def doc_points(source: str, path: str, n: int, direction: np.ndarray) -> list[PointData]:
    return [
        PointData(
            point_id(source, path, i),
            direction,
            {"source": source, "path": path, "chunk_index": i, "text": f"{path}#{i}"},
        )
        for i in range(n)
    ]


def test_upsert_trim_delete_and_count_per_path(config):
    store = open_store(config, IDENTITY)
    store.upsert(
        doc_points("s", "a.md", 5, vec(1, 0, 0, 0))
        + doc_points("s", "b.md", 2, vec(0, 1, 0, 0))
        + doc_points("t", "a.md", 1, vec(0, 0, 1, 0))
    )
    assert store.chunk_counts("s") == {"a.md": 5, "b.md": 2}
    store.upsert(doc_points("s", "a.md", 5, vec(1, 0, 0, 0)))  # same ids: no duplicates
    store.trim("s", "a.md", keep=3)
    store.delete_documents("s", ["b.md"])
    assert store.chunk_counts("s") == {"a.md": 3}
    assert store.chunk_counts("t") == {"a.md": 1}
    assert (store.count("s"), store.count("t"), store.count("u")) == (3, 1, 0)
    store.close()


def test_search_ranks_by_cosine_and_filters_by_source(config):
    store = open_store(config, IDENTITY)
    store.upsert(
        doc_points("s", "x.md", 1, vec(1, 0, 0, 0))
        + doc_points("s", "y.md", 1, vec(1, 1, 0, 0))
        + doc_points("t", "z.md", 1, vec(1, 0, 0, 0))
    )
    hits = store.search(SearchQuery("", vec(1, 0.1, 0, 0), "dense", 10, "s"))
    assert [h.payload["path"] for h in hits] == ["x.md", "y.md"]
    assert hits[0].score == pytest.approx(float(vec(1, 0.1, 0, 0) @ vec(1, 0, 0, 0)), abs=1e-5)
    assert len(store.search(SearchQuery("", vec(1, 0, 0, 0), "dense", 10))) == 3
    store.close()


def test_edge_collection_built_by_another_embedder_is_refused(tmp_path):
    config = Qdrant(path=tmp_path / "q", collection="c")
    store = open_store(config, IDENTITY)
    store.upsert(doc_points("s", "a.md", 2, vec(1, 0, 0, 0)))
    store.close()
    marker = json.loads((tmp_path / "q" / "c" / "syncd.json").read_text())
    assert marker == {"model": "local:test", "dimension": 4}
    with pytest.raises(StoreMismatch, match=r"resync --force"):
        open_store(config, Identity("openai:text-embedding-3-small", 1536))
    rebuilt = open_store(config, Identity("openai:text-embedding-3-small", 1536), rebuild=True)
    assert rebuilt.chunk_counts("s") == {}
    rebuilt.close()


def test_server_collection_built_by_another_embedder_is_refused():
    from qdrant_client import QdrantClient

    from syncd.store.server import ServerStore

    store = ServerStore(QdrantClient(location=":memory:"), "c")
    store.ensure(IDENTITY, rebuild=False)
    store.upsert(doc_points("s", "a.md", 2, vec(1, 0, 0, 0)))
    with pytest.raises(StoreMismatch, match=r"resync --force"):
        store.ensure(Identity("local:test", 8), rebuild=False)
    store.ensure(Identity("local:test", 8), rebuild=True)
    assert store.chunk_counts("s") == {}


def test_missing_collection_is_not_created_when_asked_not_to(config):
    assert open_store(config, IDENTITY, create=False) is None
