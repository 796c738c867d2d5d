"""Search scenarios: retrieval quality on the Python FAQ, and hybrid latency at 100,000 chunks.

Quality: each question heading of `bench/data/python-faq/*.rst` is a query, its answer
section (the question removed) the one relevant document; metrics come from ranx.
Latency: in process, the query's embedding excluded (drawn beforehand), over the Edge store.
"""

from __future__ import annotations

import os
import re
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from bench.corpus import document
from bench.harness import percentile
from syncd.chunking import chunk_text
from syncd.config import EmbedderConfig, QdrantConfig
from syncd.embedders.local import LocalEmbedder
from syncd.store import (
    BM25,
    DENSE,
    Identity,
    PointData,
    SearchQuery,
    bm25,
    open_store,
    point_id,
)

FAQ = Path(__file__).parent / "data" / "python-faq"
METRICS = ["ndcg@10", "recall@10", "mrr@10"]
_UNDERLINE = re.compile(r"^([=\-~^*+#\"'])\1{2,}$")


def faq_pairs(root: Path = FAQ) -> list[tuple[str, str, str]]:
    """(id, question, answer) for every section whose title is a question."""
    pairs = []
    for path in sorted(root.glob("*.rst")):
        lines = path.read_text().splitlines()
        titles = [
            i
            for i in range(len(lines) - 1)
            if lines[i].strip()
            and _UNDERLINE.match(lines[i + 1].strip())
            and len(lines[i + 1].strip()) >= len(lines[i].strip())
        ]
        for n, i in enumerate(titles):
            end = titles[n + 1] if n + 1 < len(titles) else len(lines)
            answer = "\n".join(lines[i + 2 : end]).strip()
            if lines[i].strip().endswith("?") and answer:
                pairs.append((f"{path.stem}-{n}", lines[i].strip(), answer))
    return pairs


def retrieval_quality(work: Path, limit_pairs: int | None = None) -> dict[str, Any]:
    from ranx import Qrels, Run, compare, evaluate  # the bench extra

    from syncd import store as store_module

    pairs = faq_pairs()[:limit_pairs]
    embedder = LocalEmbedder(EmbedderConfig(provider="local", model="all-MiniLM-L6-v2"))
    store = open_store(
        QdrantConfig(path=work / "q", collection="faq"), Identity("local:bench", 384)
    )
    chunks = [
        (doc_id, i, c.text)
        for doc_id, _, answer in pairs
        for i, c in enumerate(chunk_text(answer, 1000, 100, markdown=False))
    ]
    vectors = embedder.embed_sync([text for _, _, text in chunks])
    store.upsert(
        [
            PointData(
                point_id("faq", doc_id, i),
                vector,
                {"source": "faq", "path": doc_id, "chunk_index": i, "text": text},
            )
            for (doc_id, i, text), vector in zip(chunks, vectors, strict=True)
        ]
    )
    questions = embedder.embed_sync([q for _, q, _ in pairs])
    qrels = Qrels({f"q{n}": {doc_id: 1} for n, (doc_id, _, _) in enumerate(pairs)})

    def run_of(mode: str, weights: dict[str, float] | None = None) -> Run:
        run: dict[str, dict[str, float]] = {}
        saved = dict(store_module.RRF_WEIGHTS)
        store_module.RRF_WEIGHTS.update(weights or {})
        try:
            for n, (_, question, _) in enumerate(pairs):
                hits = store.search(SearchQuery(question, questions[n], mode, 30))
                best: dict[str, float] = {}
                # Documents ranked by their best chunk; ranx wants scores: 1/rank keeps order.
                for hit in hits:
                    best.setdefault(hit.payload["path"], 1.0 / (len(best) + 1))
                run[f"q{n}"] = best or {"none": 0.0}
        finally:
            store_module.RRF_WEIGHTS.update(saved)
        return Run(run, name=mode if weights is None else f"hybrid {weights[DENSE]:g}:1")

    results: dict[str, Any] = {"queries": len(pairs), "chunks": len(chunks)}
    runs = {mode: run_of(mode) for mode in ("dense", "keyword", "hybrid")}
    for mode, run in runs.items():
        results[mode] = evaluate(qrels, run, METRICS)
    # How much the dense:BM25 weight matters, and whether hybrid's margin over dense holds
    # on both halves of the files (odd and even) and beyond chance (paired randomization).
    results["hybrid_by_weight"] = {
        f"{w:g}:1": evaluate(qrels, run_of("hybrid", {DENSE: w, BM25: 1.0}), "ndcg@10")
        for w in (1.0, 2.0, 3.0, 4.0)
    }
    files = sorted({doc_id.rsplit("-", 1)[0] for doc_id, _, _ in pairs})
    for half, names in (("odd_files", files[0::2]), ("even_files", files[1::2])):
        keep = {f"q{n}" for n, (d, _, _) in enumerate(pairs) if d.rsplit("-", 1)[0] in names}
        part = Qrels({q: r for q, r in qrels.to_dict().items() if q in keep})
        results[half] = {
            mode: evaluate(
                part,
                Run({q: r for q, r in run.to_dict().items() if q in keep}, name=mode),
                "ndcg@10",
            )
            for mode, run in runs.items()
        }
    report = compare(qrels, [runs["dense"], runs["hybrid"]], ["ndcg@10"], stat_test="fisher")
    results["hybrid_vs_dense_p"] = report.to_dict()["hybrid"]["comparisons"]["dense"]
    store.close()
    return results


def search_latency(work: Path, chunks: int, queries: int = 200) -> dict[str, Any]:
    """Hybrid p50 over `chunks` points of bench-corpus text; random unit vectors for dense
    (the hardest case for quantization: real embeddings cluster)."""
    rng = np.random.default_rng(7)
    store = open_store(
        QdrantConfig(path=work / "q", collection="lat"), Identity("local:bench", 384)
    )
    texts = [document(i, paragraphs=1, words=120) for i in range(chunks)]
    batch = 2_000
    started = time.perf_counter()
    for start in range(0, chunks, batch):
        vectors = rng.standard_normal((min(batch, chunks - start), 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        store.upsert(
            [
                PointData(
                    point_id("lat", f"d{(start + j) // 10}.md", (start + j) % 10),
                    vectors[j],
                    {
                        "source": "lat",
                        "path": f"d{(start + j) // 10}.md",
                        "chunk_index": (start + j) % 10,
                        "text": texts[start + j],
                    },
                )
                for j in range(len(vectors))
            ]
        )
    load_seconds = time.perf_counter() - started
    # What the engine does after a pass that wrote: quantize what passed Edge's threshold
    # (the store already did at each 50,000-point flush, so this finds little left).
    started = time.perf_counter()
    store.optimize()
    optimize_seconds = time.perf_counter() - started
    words = [w for t in texts[:50] for w in t.split()]
    query_vectors = rng.standard_normal((queries, 384)).astype(np.float32)
    results: dict[str, Any] = {
        "chunks": chunks,
        "load_seconds": load_seconds,
        "optimize_seconds": optimize_seconds,
    }
    for mode in ("hybrid", "dense", "keyword"):
        took = []
        for n in range(queries):
            text = " ".join(words[(n * 3) % len(words) : (n * 3) % len(words) + 4])
            query = SearchQuery(text, query_vectors[n], mode, 10)
            t0 = time.perf_counter()
            store.search(query)
            took.append((time.perf_counter() - t0) * 1000)
        results[f"{mode}_p50_ms"] = statistics.median(took)
        results[f"{mode}_p95_ms"] = percentile(took, 95)
    store.close()
    return results


def bm25_cost(work: Path, chunks: int, files: int, rounds: int) -> dict[str, Any]:
    """What BM25 adds: CPU per chunk, bytes on disk (the same points in Edge with the dense
    vector alone, and with both), and the pipeline's throughput with and without it."""

    texts = [c.text for i in range(chunks) for c in chunk_text(document(i), 1000, 100)][:chunks]
    t0 = time.perf_counter()
    sparse = [bm25.model().embed_document(text) for text in texts]
    bm25_ms = (time.perf_counter() - t0) * 1000 / len(texts)
    rng = np.random.default_rng(3)
    dense = rng.standard_normal((len(texts), 384)).astype(np.float32)
    sizes = {}
    for layout in ("dense_only", "dense_and_bm25"):
        vectors = {"dense": qe.EdgeVectorParams(size=384, distance=qe.Distance.Cosine)}
        extra = (
            {"sparse_vectors": {"bm25": qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)}}
            if layout == "dense_and_bm25"
            else {}
        )
        shard = qe.EdgeShard.create(str(work / layout), qe.EdgeConfig(vectors=vectors, **extra))
        for start in range(0, len(texts), 1000):
            points = []
            for i in range(start, min(start + 1000, len(texts))):
                vector = {"dense": dense[i].tolist()}
                if layout == "dense_and_bm25":
                    vector["bm25"] = sparse[i]
                points.append(qe.Point(i, vector, {"text": texts[i]}))
            shard.update(qe.UpdateOperation.upsert_points(points))
        shard.flush()
        shard.close()
        sizes[layout] = _size(work / layout)
    return {
        "chunks": len(texts),
        "bm25_ms_per_chunk": bm25_ms,
        "store_bytes": sizes,
        "store_growth": sizes["dense_and_bm25"] / sizes["dense_only"] - 1,
        **bm25_throughput(work, files, rounds),
    }


# On the path of the processes a "without" round starts (the embedded store's among them):
# every chunk gets an empty sparse vector instead of its BM25.
_NO_BM25 = """
import qdrant_edge as qe
from syncd.store import bm25

bm25.documents = lambda texts: [qe.SparseVector(indices=[], values=[]) for _ in texts]
"""


def bm25_throughput(work: Path, files: int, rounds: int) -> dict[str, Any]:
    """The pipeline (fake API at 0 ms) with BM25 and with an empty sparse vector instead,
    alternated `rounds` times on one corpus: what BM25 costs the first sync's chunks/s."""
    from bench.corpus import write_corpus
    from bench.harness import ai21_at, fake_api_process, settings, sync

    docs = [{"name": "docs", "path": str(work / "docs")}]
    write_corpus(work / "docs", files, paragraphs=8)
    without = work / "without-bm25"
    without.mkdir()
    (without / "sitecustomize.py").write_text(_NO_BM25)
    path = os.environ.get("PYTHONPATH")
    runs: dict[str, list[float]] = {"with": [], "without": []}
    with fake_api_process(384) as (url, key):
        embedder = ai21_at(url, key, max_concurrency=2)
        try:
            for i in range(rounds):
                for name in runs:
                    if name == "without":
                        os.environ["PYTHONPATH"] = os.pathsep.join(
                            filter(None, [str(without), path])
                        )
                    config = settings(work / f"{name}-{i}", docs, embedder=embedder)
                    report, seconds = sync(config)
                    runs[name].append(report.texts_embedded / seconds)
                    _restore("PYTHONPATH", path)
                    assert _has_bm25(config) == (name == "with"), "the variant did not apply"
        finally:
            _restore("PYTHONPATH", path)
    with_, without_ = statistics.median(runs["with"]), statistics.median(runs["without"])
    return {
        "pipeline_chunks_per_s": runs,
        "with_bm25_chunks_per_s": with_,
        "without_bm25_chunks_per_s": without_,
        "throughput_cost": 1 - with_ / without_,
    }


def _size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _has_bm25(config) -> bool:
    from syncd.store import open_store

    store = open_store(config.qdrant, None, create=False)
    (record,), _ = store.scroll(None, 1)
    store.close()
    return bool(record.bm25.indices)


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
