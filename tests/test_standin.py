"""The Qdrant server stand-in answers qdrant-client over REST from another process.

Each test talks to tests/qdrant_standin.py running as a child process, through
`QdrantClient(url=...)` or syncd's server store, as syncd will talk to a real server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import httpx
import numpy as np
import pytest
from qdrant_client import QdrantClient
from qdrant_client import models as m
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
from standin_process import StandinProcess

from syncd.config import QdrantConfig
from syncd.errors import BackendUnavailable
from syncd.store import Identity, PointData, SearchQuery, open_store, point_id

DENSE = {"dense": m.VectorParams(size=4, distance=m.Distance.COSINE)}
SPARSE = {"bm25": m.SparseVectorParams(modifier=m.Modifier.IDF)}


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> StandinProcess:
    """One stand-in for the tests that only read and write; each uses its own collection."""
    process = StandinProcess(tmp_path_factory.mktemp("standin") / "data").start()
    yield process
    process.stop()


@pytest.fixture
def client(standin: StandinProcess) -> QdrantClient:
    made = standin.client()
    yield made
    made.close()


def unit(*xs: float) -> list[float]:
    v = np.array(xs, dtype=np.float64)
    return (v / np.linalg.norm(v)).tolist()


def chunk(i: int, path: str) -> m.PointStruct:
    return m.PointStruct(
        id=point_id("docs", path, i),
        vector={
            "dense": unit(1, i, i % 3, 1),
            "bm25": m.SparseVector(indices=[i % 5, 7 + i % 2], values=[1.0, 0.5 + i / 10]),
        },
        payload={"source": "docs", "path": path, "chunk_index": i, "text": f"{path}#{i}"},
    )


def hybrid_collection(client: QdrantClient, name: str, n: int = 12) -> list[m.PointStruct]:
    client.create_collection(
        name, vectors_config=DENSE, sparse_vectors_config=SPARSE, metadata={"syncd_model": "t"}
    )
    points = [chunk(i, f"doc{i % 3}.md") for i in range(n)]
    client.upsert(name, points, wait=True)
    return points


def fused(client: QdrantClient, name: str) -> list[tuple[str, float]]:
    result = client.query_points(
        name,
        prefetch=[
            m.Prefetch(query=unit(1, 2, 2, 1), using="dense", limit=8),
            m.Prefetch(query=m.SparseVector(indices=[2, 8], values=[1.0, 1.0]), using="bm25"),
        ],
        query=m.FusionQuery(fusion=m.Fusion.RRF),
        query_filter=m.Filter(
            must=[m.FieldCondition(key="source", match=m.MatchValue(value="docs"))]
        ),
        limit=5,
        with_payload=True,
    )
    return [(str(p.id), p.score) for p in result.points]


def test_named_dense_and_sparse_collection_is_created_as_asked(client):
    assert not client.collection_exists("hybrid")
    hybrid_collection(client, "hybrid")
    assert client.collection_exists("hybrid")
    config = client.get_collection("hybrid").config
    assert config.params.vectors["dense"].size == 4
    assert config.params.vectors["dense"].distance == m.Distance.COSINE
    assert config.params.sparse_vectors["bm25"].modifier == m.Modifier.IDF
    assert config.metadata == {"syncd_model": "t"}
    assert "hybrid" in {c.name for c in client.get_collections().collections}


def test_upsert_count_and_scroll_with_vectors_return_every_point(client):
    points = hybrid_collection(client, "scrolled", n=25)
    client.upsert("scrolled", points[:5], wait=True)  # same ids: no duplicates
    assert client.count("scrolled", exact=True).count == 25
    doc0 = m.Filter(must=[m.FieldCondition(key="path", match=m.MatchValue(value="doc0.md"))])
    assert client.count("scrolled", count_filter=doc0).count == 9
    seen, offset = {}, None
    while True:
        records, offset = client.scroll(
            "scrolled", limit=10, offset=offset, with_vectors=True, with_payload=True
        )
        seen.update((str(r.id), r) for r in records)
        if offset is None:
            break
    assert set(seen) == {str(p.id) for p in points}
    for p in points:
        got = seen[str(p.id)]
        assert got.payload == p.payload
        assert got.vector["dense"] == pytest.approx(p.vector["dense"], abs=1e-6)
        assert got.vector["bm25"].indices == p.vector["bm25"].indices
        assert got.vector["bm25"].values == pytest.approx(p.vector["bm25"].values)
    assert [r.payload["path"] for r in client.retrieve("scrolled", [points[4].id])] == ["doc1.md"]


def test_prefetch_rrf_fusion_gives_the_in_process_engines_hits(client):
    hybrid_collection(client, "fused")
    local = QdrantClient(":memory:")
    hybrid_collection(local, "fused")
    expected = fused(local, "fused")
    local.close()
    got = fused(client, "fused")
    assert len(got) == 5
    assert [i for i, _ in got] == [i for i, _ in expected]
    assert [s for _, s in got] == pytest.approx([s for _, s in expected])


def test_dense_sparse_and_batch_queries_rank_as_the_vectors_say(client, standin):
    points = hybrid_collection(client, "ranked")
    top = client.query_points("ranked", query=points[7].vector["dense"], using="dense", limit=1)
    assert top.points[0].id == points[7].id
    assert top.points[0].score == pytest.approx(1.0)
    sparse = m.SparseVector(indices=[4], values=[1.0])
    hits = client.query_points("ranked", query=sparse, using="bm25", limit=20).points
    assert {str(h.id) for h in hits} == {str(p.id) for p in points if 4 in p.vector["bm25"].indices}
    batch = client.query_batch_points(
        "ranked",
        [m.QueryRequest(query=p.vector["dense"], using="dense", limit=1) for p in points[:3]],
    )
    assert [r.points[0].id for r in batch] == [p.id for p in points[:3]]
    # the legacy search route, which qdrant-client no longer sends but older tools do
    reply = httpx.post(
        f"{standin.url}/collections/ranked/points/search",
        json={"vector": {"name": "dense", "vector": points[2].vector["dense"]}, "limit": 1},
    )
    assert reply.status_code == 200
    assert reply.json()["status"] == "ok"
    assert reply.json()["result"][0]["id"] == points[2].id


def test_delete_by_filter_removes_exactly_the_matching_points(client):
    hybrid_collection(client, "deleted")
    client.delete(
        "deleted",
        m.FilterSelector(
            filter=m.Filter(
                must=[
                    m.FieldCondition(key="path", match=m.MatchAny(any=["doc1.md"])),
                    m.FieldCondition(key="chunk_index", range=m.Range(gte=4)),
                ]
            )
        ),
        wait=True,
    )
    facet = client.facet("deleted", "path", limit=100, exact=True)
    assert {h.value: h.count for h in facet.hits} == {"doc0.md": 4, "doc1.md": 1, "doc2.md": 4}
    client.delete("deleted", m.PointIdsList(points=[point_id("docs", "doc0.md", 0)]))
    assert client.count("deleted").count == 8


def test_payload_index_is_recorded_in_the_collection_info(client):
    hybrid_collection(client, "indexed")
    client.create_payload_index("indexed", "source", m.PayloadSchemaType.KEYWORD, wait=True)
    client.create_payload_index("indexed", "chunk_index", m.PayloadSchemaType.INTEGER)
    schema = client.get_collection("indexed").payload_schema
    assert schema["source"].data_type == m.PayloadSchemaType.KEYWORD
    assert schema["source"].points == 12
    assert schema["chunk_index"].data_type == m.PayloadSchemaType.INTEGER
    client.delete_payload_index("indexed", "chunk_index")
    assert set(client.get_collection("indexed").payload_schema) == {"source"}


def test_alias_switches_between_collections_in_one_request(client):
    hybrid_collection(client, "old", n=3)
    hybrid_collection(client, "new", n=6)
    client.update_collection_aliases(
        [
            m.CreateAliasOperation(
                create_alias=m.CreateAlias(collection_name="old", alias_name="live")
            )
        ]
    )
    assert client.count("live").count == 3
    client.update_collection_aliases(
        [
            m.DeleteAliasOperation(delete_alias=m.DeleteAlias(alias_name="live")),
            m.CreateAliasOperation(
                create_alias=m.CreateAlias(collection_name="new", alias_name="live")
            ),
        ]
    )
    assert client.count("live").count == 6
    assert len(fused(client, "live")) == 5
    assert {(a.alias_name, a.collection_name) for a in client.get_aliases().aliases} >= {
        ("live", "new")
    }
    assert [a.alias_name for a in client.get_collection_aliases("new").aliases] == ["live"]
    client.delete_collection("old")
    assert not client.collection_exists("old")
    assert client.collection_exists("live")


def test_errors_come_back_as_qdrant_shapes_them(client, standin):
    with pytest.raises(UnexpectedResponse) as missing:
        client.get_collection("nowhere")
    assert missing.value.status_code == 404
    assert "nowhere" in missing.value.content.decode()
    hybrid_collection(client, "twice", n=1)
    with pytest.raises(UnexpectedResponse) as twice:
        hybrid_collection(client, "twice", n=1)
    assert twice.value.status_code == 400
    bad = httpx.post(f"{standin.url}/collections/twice/points/count", json={"exact": "maybe"})
    assert bad.status_code == 400
    assert bad.json()["status"]["error"]
    unknown = httpx.post(f"{standin.url}/collections/twice/points/discover", json={})
    assert unknown.status_code == 404
    assert (
        "does not serve POST /collections/twice/points/discover"
        in unknown.json()["status"]["error"]
    )
    assert httpx.get(standin.url).json()["version"] == client.info().version


def test_syncd_server_store_upserts_counts_and_searches(standin):
    config = QdrantConfig(path=None, url=standin.url, collection="syncd")
    store = open_store(config, Identity("local:test", 4))
    direction = np.array(unit(1, 0, 0, 0), dtype=np.float32)
    other = np.array(unit(0, 1, 0, 0), dtype=np.float32)
    store.upsert(
        [
            PointData(point_id("s", path, i), vec, {"source": "s", "path": path, "chunk_index": i})
            for path, vec, n in [("a.md", direction, 3), ("b.md", other, 2)]
            for i in range(n)
        ]
    )
    assert store.count("s") == 5
    assert store.chunk_counts("s") == {"a.md": 3, "b.md": 2}
    hits = store.search(SearchQuery("", other, "dense", 2, "s"))
    assert [h.payload["path"] for h in hits] == ["b.md", "b.md"]
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    store.trim("s", ["a.md"], keep=1)
    store.delete_documents("s", ["b.md"])
    assert store.chunk_counts("s") == {"a.md": 1}
    store.close()
    reopened = open_store(config, Identity("local:test", 4), create=False)
    assert reopened.count("s") == 1
    reopened.close()


def test_data_survives_a_stop_and_a_kill_and_outages_are_backend_unavailable(make_standin):
    standin = make_standin()
    client = standin.client()
    points = hybrid_collection(client, "kept")
    client.update_collection_aliases(
        [m.CreateAliasOperation(create_alias=m.CreateAlias(collection_name="kept", alias_name="k"))]
    )
    store = open_store(
        QdrantConfig(path=None, url=standin.url, collection="syncd"), Identity("local:test", 4)
    )
    url = standin.url
    standin.stop()
    with pytest.raises(ResponseHandlingException):
        client.count("kept")
    with pytest.raises(BackendUnavailable, match="unreachable"):
        store.count("s")
    standin.start()
    assert standin.url == url
    assert client.count("k").count == len(points)
    assert client.get_collection("kept").config.metadata == {"syncd_model": "t"}
    store.upsert([PointData(point_id("s", "x.md", 0), np.ones(4, np.float32) / 2, {"source": "s"})])
    # a crash right after an acknowledged write keeps it: local mode commits every point
    standin.kill()
    standin.start()
    assert store.count("s") == 1
    assert fused(client, "kept") == fused(client, "k")
    store.close()
    client.close()


def test_a_wrong_or_missing_api_key_is_refused(make_standin):
    standin = make_standin(api_key="right-key")
    with warnings.catch_warnings():
        # qdrant-client warns that a key over plain http is insecure; on loopback it is not
        warnings.filterwarnings("ignore", "Api key is used with an insecure connection")
        wrong = standin.client(api_key="wrong-key")
        right = standin.client(api_key="right-key")
        store_config = QdrantConfig(path=None, url=standin.url, api_key="wrong-key", collection="c")
        with pytest.raises(BackendUnavailable, match="refused the credentials"):
            open_store(store_config, Identity("local:test", 4))
    with pytest.raises(UnexpectedResponse) as refused:
        wrong.get_collections()
    assert refused.value.status_code == 403
    anonymous = httpx.get(f"{standin.url}/collections")
    assert anonymous.status_code == 401
    assert "API key" in anonymous.json()["status"]["error"]
    bearer = httpx.get(f"{standin.url}/collections", headers={"Authorization": "Bearer right-key"})
    assert bearer.status_code == 200
    assert right.get_collections().collections == []
    assert httpx.get(f"{standin.url}/readyz").status_code == 200
    for made in (wrong, right):
        made.close()


def test_cli_resync_and_search_use_the_standin_and_exit_3_while_it_is_down(
    make_standin, docs, make_config
):
    standin = make_standin()
    (docs / "tides.txt").write_text("The moon's gravity raises the tides twice a day.\n")
    (docs / "bread.md").write_text("# Sourdough\n\nFeed the starter with flour and water.\n")
    project = make_config(qdrant={"url": standin.url, "collection": "mirror"}).parent

    def syncd(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "syncd", *args],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert syncd("resync").returncode == 0
    client = standin.client()
    records, _ = client.scroll("mirror", limit=10, with_payload=True)
    assert sorted(r.payload["path"] for r in records) == ["bread.md", "tides.txt"]
    found = syncd("search", "ocean tides and the moon", "--json", "--limit", "1")
    assert json.loads(found.stdout)["hits"][0]["path"] == "tides.txt"
    client.close()
    standin.stop()
    down = syncd("resync")
    assert down.returncode == 3, down.stderr


def test_daemon_waits_out_a_server_outage_and_then_syncs_what_changed_meanwhile(
    make_standin, docs, make_daemon
):
    from daemon_process import get, wait_until

    standin = make_standin()
    (docs / "tides.txt").write_text("The moon's gravity raises the tides twice a day.\n")
    daemon = make_daemon(qdrant={"url": standin.url, "collection": "mirror"}).start()
    daemon.wait_ready()
    assert daemon.paths("ocean tides and the moon", 1) == ["tides.txt"]

    standin.stop()
    (docs / "bread.md").write_text("# Sourdough\n\nFeed the starter with flour and water.\n")
    (docs / "tides.txt").unlink()
    wait_until(lambda: get(daemon.url("/readyz"))[0] == 503, 30, "not ready while Qdrant is down")
    assert daemon.proc.poll() is None

    standin.start()
    wait_until(lambda: get(daemon.url("/readyz"))[0] == 200, 60, "ready once Qdrant is back")
    wait_until(
        lambda: daemon.paths("feeding a sourdough starter", 5) == ["bread.md"],
        30,
        "the change made during the outage is synced, and the deletion too",
    )
    code, log = daemon.stop_with_log()
    assert code == 0
    assert '"backend_unavailable"' in log
    client = standin.client()
    records, _ = client.scroll("mirror", limit=10, with_payload=True)
    assert [r.payload["path"] for r in records] == ["bread.md"]
    client.close()
