"""Qdrant Edge and a Qdrant server (qdrant-client's in-process mode) behave the same."""

import json

import numpy as np
import pytest

from syncd.config import QdrantConfig
from syncd.errors import StoreMismatch
from syncd.store import Identity, PointData, SearchQuery, open_store, point_id

IDENTITY = Identity("local:test", 4)


@pytest.fixture(params=["edge", "server"])
def config(request, tmp_path) -> QdrantConfig:
    if request.param == "edge":
        return QdrantConfig(path=tmp_path / "q", collection="c")
    return QdrantConfig(path=None, url=":memory:", collection="c")


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
        + doc_points("s", "c.md", 4, vec(0, 1, 1, 0))
        + doc_points("t", "a.md", 1, vec(0, 0, 1, 0))
    )
    assert store.chunk_counts("s") == {"a.md": 5, "b.md": 2, "c.md": 4}
    store.upsert(doc_points("s", "a.md", 5, vec(1, 0, 0, 0)))  # same ids: no duplicates
    store.trim("s", ["a.md", "c.md"], keep=3)
    store.delete_documents("s", ["b.md"])
    assert store.chunk_counts("s") == {"a.md": 3, "c.md": 3}
    assert store.chunk_counts("t") == {"a.md": 1}
    assert (store.count("s"), store.count("t"), store.count("u")) == (6, 1, 0)
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
    config = QdrantConfig(path=tmp_path / "q", collection="c")
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


def _old_edge_shard(path, points: list[PointData]) -> None:
    """The layout syncd wrote before hybrid search: one unnamed dense vector."""
    import qdrant_edge as qe

    shard = qe.EdgeShard.create(
        str(path), qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=4, distance=qe.Distance.Cosine))
    )
    for field in ("source", "path"):
        shard.update(qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Keyword))
    shard.update(
        qe.UpdateOperation.upsert_points(
            [qe.Point(p.id, p.vector.tolist(), p.payload) for p in points]
        )
    )
    shard.flush()
    shard.close()
    (path / "syncd.json").write_text(json.dumps({"model": IDENTITY.model, "dimension": 4}))


def _old_points() -> list[PointData]:
    return [
        PointData(
            point_id("s", f"{name}.md", 0),
            direction,
            {"source": "s", "path": f"{name}.md", "chunk_index": 0, "text": text},
        )
        for name, direction, text in [
            ("pump", vec(1, 0, 0, 0), "Pump XK-4471 moves the coolant"),
            ("fan", vec(0, 1, 0, 0), "The fan cools the cabinet"),
            ("valve", vec(0, 0, 1, 0), "The valve opens under pressure"),
        ]
    ]


def test_old_edge_shard_is_upgraded_on_open_without_embedding(tmp_path):
    from structlog.testing import capture_logs

    path = tmp_path / "q" / "c"
    path.parent.mkdir()
    _old_edge_shard(path, _old_points())
    # No embedder exists here: the upgrade can only copy vectors and read payload texts.
    with capture_logs() as logs:
        store = open_store(QdrantConfig(path=tmp_path / "q", collection="c"), IDENTITY)
    assert [e["event"] for e in logs] == ["store_upgrade_started", "store_upgrade_finished"]
    assert json.loads((path / "edge_config.json").read_text())["sparse_vectors"] == {
        "bm25": {"modifier": "idf", "memory": "cold"}
    }
    assert sorted(p.name for p in path.parent.iterdir()) == ["c"]
    assert store.chunk_counts("s") == {"pump.md": 1, "fan.md": 1, "valve.md": 1}
    keyword = store.search(SearchQuery("XK-4471", None, "keyword", 5))
    assert [h.payload["path"] for h in keyword] == ["pump.md"]
    dense = store.search(SearchQuery("", vec(0, 1, 0, 0), "dense", 1))
    assert dense[0].payload["path"] == "fan.md"
    assert dense[0].score == pytest.approx(1.0, abs=1e-5)
    store.close()
    with capture_logs() as logs:
        open_store(QdrantConfig(path=tmp_path / "q", collection="c"), IDENTITY).close()
    assert logs == []


def test_edge_shard_with_its_indexes_in_memory_opens_searches_and_takes_writes(tmp_path):
    """As syncd made shards before it kept everything but the int8 vectors cold."""
    import qdrant_edge as qe

    from syncd.store import bm25

    path = tmp_path / "q" / "c"
    path.parent.mkdir()
    shard = qe.EdgeShard.create(
        str(path),
        qe.EdgeConfig(
            vectors={"dense": qe.EdgeVectorParams(size=4, distance=qe.Distance.Cosine)},
            sparse_vectors={"bm25": qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
        ),
    )
    for field, schema in [("source", "Keyword"), ("path", "Keyword"), ("chunk_index", "Integer")]:
        schema = getattr(qe.PayloadSchemaType, schema)
        shard.update(qe.UpdateOperation.create_field_index(field, schema))
    embed = bm25.model().embed_document
    shard.update(
        qe.UpdateOperation.upsert_points(
            [
                qe.Point(
                    p.id, {"dense": p.vector.tolist(), "bm25": embed(p.payload["text"])}, p.payload
                )
                for p in _old_points()
            ]
        )
    )
    shard.flush()
    shard.close()
    (path / "syncd.json").write_text(json.dumps({"model": IDENTITY.model, "dimension": 4}))

    store = open_store(QdrantConfig(path=tmp_path / "q", collection="c"), IDENTITY)
    store.upsert(doc_points("s", "notes/boiler.md", 1, vec(1, 1, 0, 0)))
    store.optimize()
    hits = store.search(SearchQuery("XK-4471", vec(1, 0, 0, 0), "hybrid", 2))
    assert [h.payload["path"] for h in hits] == ["pump.md", "notes/boiler.md"]
    keyword = store.search(SearchQuery("boiler", None, "keyword", 5))
    assert [h.payload["path"] for h in keyword] == ["notes/boiler.md"]
    only = store.search(SearchQuery("", vec(1, 0, 0, 0), "dense", 5, path_glob="notes/**"))
    assert [h.payload["path"] for h in only] == ["notes/boiler.md"]
    assert store.chunk_counts("s") == {
        "pump.md": 1,
        "fan.md": 1,
        "valve.md": 1,
        "notes/boiler.md": 1,
    }
    store.close()


def test_edge_upgrade_interrupted_by_a_crash_is_finished_on_next_open(tmp_path):
    root = tmp_path / "q"
    root.mkdir()
    # The crash fell between the two renames: the complete new shard waits at .upgrade.
    open_store(QdrantConfig(path=tmp_path / "new", collection="c"), IDENTITY).close()
    (tmp_path / "new" / "c").rename(root / "c.upgrade")
    _old_edge_shard(root / "c.old", _old_points())
    store = open_store(QdrantConfig(path=root, collection="c"), IDENTITY)
    assert sorted(p.name for p in root.iterdir()) == ["c"]
    assert store.count("s") == 0
    store.close()
    # A staging shard beside a shard still of the old layout is incomplete: built again.
    _old_edge_shard(root / "d", _old_points())
    (root / "d.upgrade").mkdir()
    store = open_store(QdrantConfig(path=root, collection="d"), IDENTITY)
    assert store.count("s") == 3
    store.close()


def test_edge_shard_half_created_when_a_crash_came_is_built_again_not_refused(tmp_path):
    root = tmp_path / "q"
    root.mkdir()
    # A kill -9 inside creation: the shard exists but its identity file was never written.
    open_store(QdrantConfig(path=tmp_path / "new", collection="c"), IDENTITY).close()
    (tmp_path / "new" / "c" / "syncd.json").unlink()
    (tmp_path / "new" / "c").rename(root / "c.new")
    store = open_store(QdrantConfig(path=root, collection="c"), IDENTITY)
    assert sorted(p.name for p in root.iterdir()) == ["c"]
    assert store.identity == IDENTITY
    store.close()
    reopened = open_store(QdrantConfig(path=root, collection="c"), IDENTITY, create=False)
    assert reopened.identity == IDENTITY
    reopened.close()


def test_old_server_collection_is_upgraded_behind_an_alias():
    from qdrant_client import QdrantClient
    from qdrant_client import models as m

    from syncd.store.server import ServerStore

    client = QdrantClient(location=":memory:")
    client.create_collection(
        "c",
        vectors_config=m.VectorParams(size=4, distance=m.Distance.COSINE),
        metadata={"syncd_model": IDENTITY.model},
    )
    client.upsert(
        "c",
        [
            m.PointStruct(id=p.id, vector=p.vector.tolist(), payload=p.payload)
            for p in _old_points()
        ],
    )
    store = ServerStore(client, "c")
    assert store.ensure(IDENTITY, rebuild=False)
    assert [a.collection_name for a in client.get_aliases().aliases] == ["c-bm25"]
    keyword = store.search(SearchQuery("XK-4471", None, "keyword", 5))
    assert [h.payload["path"] for h in keyword] == ["pump.md"]
    assert store.search(SearchQuery("", vec(0, 0, 1, 0), "dense", 1))[0].payload["path"] == (
        "valve.md"
    )
    # The alias is the collection now: a rebuild for another embedder drops what it names.
    store.ensure(Identity("local:test", 8), rebuild=True)
    assert client.get_aliases().aliases == []
    assert store.chunk_counts("s") == {}


def test_edge_quantizes_what_was_written_and_still_answers_like_an_exact_search(tmp_path):
    """8,000 points of 384 dimensions pass Edge's indexing threshold: closing the store
    leaves them in a quantized segment, and searches rescoring it return the exact top 10."""
    import qdrant_edge as qe

    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((8_000, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    config = QdrantConfig(path=tmp_path / "q", collection="c")
    store = open_store(config, Identity("local:test", 384))
    for start in range(0, len(vectors), 1_000):
        store.upsert(
            [
                PointData(
                    point_id("s", f"{i}.md", 0), vectors[i], {"source": "s", "path": f"{i}.md"}
                )
                for i in range(start, start + 1_000)
            ]
        )
    store.close()

    store = open_store(config, Identity("local:test", 384))
    queries = rng.standard_normal((20, 384)).astype(np.float32)
    found = [
        [h.payload["path"] for h in store.search(SearchQuery("", q, "dense", 10))] for q in queries
    ]
    store.close()
    shard = qe.EdgeShard.load(str(tmp_path / "q" / "c"))
    try:
        assert shard.info().segments_count >= 2  # the appendable one and a quantized one
        assert shard.optimize() is False  # nothing was left unindexed
        exact = qe.SearchParams(exact=True)
        for q, paths in zip(queries, found, strict=True):
            request = qe.QueryRequest(
                query=qe.Query.Nearest(q.tolist(), using="dense"),
                limit=10,
                params=exact,
                with_payload=True,
            )
            assert paths == [p.payload["path"] for p in shard.query(request)]
    finally:
        shard.close()
