"""Hybrid search: dense + BM25 fused with RRF, filters, and the same hits in both backends.

The corpus is small and real text; the vectors come from the real local embedder.
"""

from __future__ import annotations

import pytest

from syncd.config import EmbedderConfig, QdrantConfig
from syncd.embedders.local import LocalEmbedder
from syncd.errors import ConfigError
from syncd.store import Identity, PointData, SearchQuery, open_store, point_id

CODES = ["XK-4417", "XK-4741", "XK-4470", "XK-7144", "XK-4471", "XK-1447", "XK-4714"]
DOCS: dict[str, tuple[str, dict[str, str]]] = {
    f"products/{code.lower()}.md": (
        f"Pump {code}: circulation pump for the secondary coolant loop, "
        f"flow rate {20 + i * 3} litres per minute, {100 + i * 20} W.",
        {"kind": "datasheet", "year": str(2020 + i % 3)},
    )
    for i, code in enumerate(CODES)
}
DOCS |= {
    "runbooks/evacuate.md": (
        "To drain a node, move its workload to the other nodes and wait until it is idle.",
        {"kind": "runbook"},
    ),
    "runbooks/maintenance.md": (
        "Maintenance windows are announced a week ahead; each node is drained and taken "
        "out of service one at a time.",
        {"kind": "runbook"},
    ),
    "runbooks/rejoin.md": (
        "When the work is done, bring the drained machine back into service and check that "
        "it takes jobs again.",
        {"kind": "runbook"},
    ),
    "notes/release-2.3.md": (
        "Release 2.3: faster start-up, a darker dashboard theme, CSV export of the audit "
        "log, the login page remembers the language, no more crash on a full disk, and "
        "qnodectl cordon replaces the old pause flag of the scheduler.",
        {"kind": "notes", "year": "2024"},
    ),
    "notes/deep/nested/changes.md": (
        "Older changes: the coolant loop alarms now show the pump model.",
        {"kind": "notes"},
    ),
}
PRODUCT = "products/xk-4471.md"
COMMAND = "notes/release-2.3.md"


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return LocalEmbedder(EmbedderConfig(provider="local", model="all-MiniLM-L6-v2"))


@pytest.fixture(scope="module")
def points(embedder) -> list[PointData]:
    paths = list(DOCS)
    vectors = embedder.embed_sync([DOCS[p][0] for p in paths])
    return [
        PointData(
            point_id("docs", path, 0),
            vector,
            {
                "source": "docs",
                "path": path,
                "chunk_index": 0,
                "chunk_count": 1,
                "text": DOCS[path][0],
                "metadata": DOCS[path][1],
            },
        )
        for path, vector in zip(paths, vectors, strict=True)
    ]


def _config(kind: str, tmp_path) -> QdrantConfig:
    if kind == "edge":
        return QdrantConfig(path=tmp_path / "q", collection="c")
    return QdrantConfig(path=None, url=":memory:", collection="c")


@pytest.fixture(params=["edge", "server"])
def store(request, tmp_path, points, embedder):
    store = open_store(_config(request.param, tmp_path), Identity("local:test", 384))
    store.upsert(points)
    yield store
    store.close()


@pytest.fixture
def ask(store, embedder):
    def ask(text: str, mode: str = "hybrid", **kw) -> list[str]:
        dense = embedder.embed_sync([text])[0] if mode != "keyword" else None
        hits = store.search(SearchQuery(text, dense, mode, kw.pop("limit", 10), **kw))
        return [h.payload["path"] for h in hits]

    return ask


@pytest.mark.parametrize(
    ("text", "wanted"),
    [("XK-4471", PRODUCT), ("qnodectl cordon a node for maintenance", COMMAND)],
    ids=["product_code", "command_name"],
)
def test_exact_term_that_dense_misses_is_found_by_hybrid(ask, text, wanted):
    assert ask(text, "dense")[0] != wanted
    assert ask(text, "keyword")[0] == wanted
    assert ask(text, "hybrid")[0] == wanted


def test_path_glob_filters_on_the_document_path(ask):
    assert set(ask("pump", path_glob="products/xk-44*.md")) == {
        "products/xk-4417.md",
        "products/xk-4470.md",
        "products/xk-4471.md",
    }
    assert ask("pump", path_glob="notes/**") == [
        "notes/deep/nested/changes.md",
        "notes/release-2.3.md",
    ]
    # No slash: the file name at any depth.
    assert ask("pump alarms", path_glob="changes.md") == ["notes/deep/nested/changes.md"]
    assert ask("pump", path_glob="nowhere/**") == []


def test_where_matches_metadata_values(ask):
    assert set(ask("node", where={"kind": "runbook"})) == {
        "runbooks/evacuate.md",
        "runbooks/maintenance.md",
        "runbooks/rejoin.md",
    }
    assert ask("qnodectl", "keyword", where={"kind": "notes", "year": "2024"}) == [COMMAND]
    assert ask("pump", where={"kind": "nothing"}) == []


def test_source_filter_and_limit(ask):
    assert len(ask("pump", limit=3)) == 3
    assert ask("pump", source="other") == []


def test_a_query_of_stopwords_only_falls_back_to_dense(ask):
    assert ask("the of and", "keyword") == []
    assert len(ask("the of and", "hybrid", limit=4)) == 4


def test_document_returns_payloads_in_chunk_order(store, embedder):
    texts = [f"part {i} of the long guide" for i in range(5)]
    vectors = embedder.embed_sync(texts)
    store.upsert(
        [
            PointData(
                point_id("docs", "long.md", i),
                vectors[i],
                {"source": "docs", "path": "long.md", "chunk_index": i, "text": texts[i]},
            )
            for i in (3, 0, 4, 1, 2)
        ]
    )
    assert [p["text"] for p in store.document("docs", "long.md")] == texts
    assert store.document("docs", "missing.md") == []


def test_edge_and_server_give_the_same_hits(tmp_path, points, embedder):
    stores = [
        open_store(_config(k, tmp_path), Identity("local:test", 384)) for k in ("edge", "server")
    ]
    for s in stores:
        s.upsert(points)
    fused_compared = 0
    for text in ("XK-4471", "qnodectl cordon a node for maintenance", "drained machine"):
        dense = embedder.embed_sync([text])[0]
        found: dict[str, list[dict[str, float]]] = {}
        for mode in ("dense", "keyword", "hybrid"):
            found[mode] = [
                {h.payload["path"]: round(h.score, 4) for h in s.search(query)}
                for s in stores
                for query in [SearchQuery(text, dense, mode, len(DOCS))]
            ]
        # Every point is returned, so no cut falls between tied scores; RRF ranks tied BM25
        # scores in each engine's own order, so fused scores agree where BM25 has no ties.
        assert found["dense"][0] == found["dense"][1]
        assert found["keyword"][0] == found["keyword"][1]
        keyword_scores = list(found["keyword"][0].values())
        if len(set(keyword_scores)) == len(keyword_scores):
            assert found["hybrid"][0] == found["hybrid"][1], text
            fused_compared += 1
        # The best hybrid hit is the same; two documents tied for it (one first by dense and
        # second by BM25, the other the reverse) may come in either engine's order.
        best = [{p for p, v in f.items() if v == max(f.values())} for f in found["hybrid"]]
        assert best[0] == best[1], text
    assert fused_compared >= 2
    for s in stores:
        s.close()


def test_bad_queries_are_usage_errors():
    with pytest.raises(ConfigError, match="mode"):
        SearchQuery("x", None, "fuzzy")
    with pytest.raises(ConfigError, match="limit"):
        SearchQuery("x", None, "keyword", limit=101)
    with pytest.raises(ConfigError, match="where"):
        SearchQuery("x", None, "keyword", where={"a.b": "c"})
