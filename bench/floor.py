"""Issue 18: the CPU a chunk needs at least, against what the machine has to give.

The pipeline targets compare syncd with a bare client posting the same texts to the fake
API. Both share this machine's cores with the fake API's process. So a ratio is reachable
only if syncd's unavoidable work fits in what the bare run leaves: `cores * bare wall /
target - the API's CPU`. The unavoidable work is measured here part by part, each alone
in this process on the same chunks: what the bare client itself spends (HTTP, JSON),
chunking, BM25, Qdrant Edge taking the points (syncd's payload, flush and optimize
included) and SQLite recording the vectors and documents. Reading files, planning, the
event loop and Redis are left out, so the floor is lower than any real design's cost.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.corpus import document, write_corpus
from bench.harness import fake_api_process, process_cpu_seconds
from bench.scenarios import post_batches
from syncd.chunking import chunk_text
from syncd.state import State
from syncd.state.rows import Synced
from syncd.store import Identity, Record, bm25, point_id
from syncd.store.edge import EdgeStore


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(fn) -> tuple[Any, float]:
    started = _cpu()
    out = fn()
    return out, _cpu() - started


def _children() -> list[int]:
    me = os.getpid()
    return [int(pid) for pid in Path(f"/proc/{me}/task/{me}/children").read_text().split()]


def floor(
    work: Path,
    docs: dict[str, str],
    dimension: int,
    latency: float,
    target: float,
    rounds: int = 3,
) -> dict[str, Any]:
    """`docs`: path → text (Markdown if every path ends in .md); `target`: the ratio the
    issue asks for; the bare client runs `rounds` times and its median run counts."""
    work.mkdir(parents=True, exist_ok=True)
    markdown = all(p.endswith(".md") for p in docs)
    chunked, chunking = _timed(
        lambda: {p: chunk_text(t, 1000, 100, markdown=markdown) for p, t in docs.items()}
    )
    texts = [c.text for chunks in chunked.values() for c in chunks]
    with fake_api_process(dimension, latency) as (url, key):
        asyncio.run(post_batches(url, key, texts[:400], 2))  # connections and imports warm
        (api_pid,) = _children()
        runs = []
        for _ in range(rounds):
            api_before, started = process_cpu_seconds(api_pid), time.perf_counter()
            _, client = _timed(lambda: asyncio.run(post_batches(url, key, texts, 2)))
            wall = time.perf_counter() - started
            runs.append((wall, client, process_cpu_seconds(api_pid) - api_before))
    bare, client, api = sorted(runs)[len(runs) // 2]  # the median run by wall time
    sparse, bm25_cpu = _timed(lambda: [bm25.model().embed_document(t) for t in texts])
    dense = np.random.default_rng(0).standard_normal((len(texts), dimension)).astype(np.float32)
    records, vectors, synced, i = [], {}, [], 0
    for path, chunks in chunked.items():
        doc_hash = hashlib.sha256(docs[path].encode()).hexdigest()
        base = {
            "source": "docs",
            "path": path,
            "chunk_count": len(chunks),
            "doc_hash": doc_hash,
            "metadata": {},
            "format": "text/markdown" if markdown else "text/plain",
            "mtime": 1.7e9,
        }
        for n, c in enumerate(chunks):
            payload = base | {"chunk_index": n, "text": c.text, "chunk_hash": c.hash}
            records.append((point_id("docs", path, n), dense[i], sparse[i], payload))
            vectors[c.hash] = dense[i]
            i += 1
        synced.append(Synced("docs", path, len(docs[path]), 0, doc_hash, [c.hash for c in chunks]))

    def edge() -> None:
        store = EdgeStore.open(
            work / "edge", Identity("bench", dimension), rebuild=False, create=True
        )
        store.upsert_records([Record(i, v.tolist(), s, p) for i, v, s, p in records])
        store.close()

    def state() -> None:
        db = State(work / "state.db")
        db.add_vectors(vectors)
        db.record_synced(synced)
        db.close()

    edge_cpu, state_cpu = _timed(edge)[1], _timed(state)[1]
    parts = {
        "client": client,
        "chunking": chunking,
        "bm25": bm25_cpu,
        "edge": edge_cpu,
        "state": state_cpu,
    }
    cores = os.cpu_count() or 1
    needed = sum(parts.values())
    budget = cores * bare / target - api
    return {
        "chunks": len(texts),
        "dimension": dimension,
        "latency": latency,
        "target": target,
        "cores": cores,
        "bare_seconds": bare,
        "api_cpu_seconds": api,
        "us_per_chunk": {k: v * 1e6 / len(texts) for k, v in parts.items()},
        "floor_cpu_seconds": needed,
        "budget_cpu_seconds": budget,
        # syncd's best ratio if its floor and the API shared every core perfectly.
        "best_ratio": bare * cores / (needed + api),
    }


def pipeline_floor(work: Path, files: int) -> dict[str, Any]:
    """The corpus and the API of the 0 ms pipeline scenario."""
    paths = write_corpus(work / "docs", files, paragraphs=8)
    docs = {str(p.relative_to(work / "docs")): p.read_text() for p in paths}
    return floor(work, docs, 384, 0.0, 0.9)


def queue_floor(work: Path, entries: int) -> dict[str, Any]:
    """The entries and the API of the queue scenario (20 ms a request)."""
    docs = {f"doc-{i}": document(i, paragraphs=1, words=30) for i in range(entries)}
    return floor(work, docs, 64, 0.02, 0.9)
