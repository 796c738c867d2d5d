"""The scenarios. Each returns its figures; ratios compare things measured in this run."""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from bench.corpus import document, edit, write_corpus
from bench.harness import (
    FakeEmbedAPI,
    ai21,
    ai21_at,
    daemon,
    descendants,
    fake_api_process,
    free_port,
    percentile,
    process_cpu_seconds,
    settings,
    sync,
    syncd,
    top_path,
    until,
)
from syncd.chunking import chunk_text


def corpus_chunks(root: Path, max_chars: int = 1000, overlap: int = 100) -> list[str]:
    texts = []
    for path in sorted(root.rglob("*.md")):
        texts += [c.text for c in chunk_text(path.read_text(), max_chars, overlap, markdown=True)]
    return texts


async def post_batches(url: str, key: str, texts: list[str], concurrency: int) -> None:
    """The floor: the same texts to the same API in full batches, nothing else done."""
    batches = [texts[i : i + 200] for i in range(0, len(texts), 200)]
    slots = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:

        async def one(batch: list[str]) -> None:
            async with slots:
                r = await client.post(f"{url}/embed", json={"texts": batch, "type": "segment"})
                r.raise_for_status()
                r.json()

        await asyncio.gather(*(one(b) for b in batches))


def pipeline_overhead(
    work: Path, files: int, latency: float = 0.0, rounds: int = 1
) -> dict[str, Any]:
    """1. syncd's first sync vs. posting the same chunks to the same fake API directly.

    The fake runs in its own process, as a real API would. At zero latency what is left is
    each side's own work per chunk; with latency, whether syncd hides its work behind the
    requests in flight. With `rounds`, both sides run that many times, alternated, and the
    medians are compared: one run of either side moved by a tenth from run to run here.
    """
    root = work / f"pipeline-{latency}"
    write_corpus(root / "docs", files, paragraphs=8)
    texts = corpus_chunks(root / "docs")
    docs = [{"name": "docs", "path": str(root / "docs")}]
    syncd_runs, raw_runs = [], []
    with fake_api_process(384, latency) as (url, key):
        for i in range(rounds):
            config = settings(
                root / f"run-{i}", docs, embedder=ai21_at(url, key, max_concurrency=2)
            )
            started = time.perf_counter()
            asyncio.run(post_batches(url, key, texts, 2))
            raw_runs.append(time.perf_counter() - started)
            report, seconds = sync(config)
            syncd_runs.append(seconds)
            assert report.texts_embedded == len(set(texts))
    syncd_seconds, raw = statistics.median(syncd_runs), statistics.median(raw_runs)
    return {
        "files": files,
        "chunks": report.texts_embedded,
        "latency": latency,
        "rounds": rounds,
        "syncd_seconds": syncd_seconds,
        "raw_seconds": raw,
        "syncd_chunks_per_s": report.texts_embedded / syncd_seconds,
        "raw_chunks_per_s": len(texts) / raw,
        "ratio": raw / syncd_seconds,
        "ratios": [r / s for r, s in zip(raw_runs, syncd_runs, strict=True)],
    }


def local_embedder(work: Path, files: int) -> dict[str, Any]:
    """2. First sync with the local model vs. the bare model on the same chunk texts."""
    from syncd.config import EmbedderConfig
    from syncd.embedders.local import LocalEmbedder

    root = work / "local"
    write_corpus(root / "docs", files, paragraphs=6, words=80)
    texts = corpus_chunks(root / "docs")
    model = LocalEmbedder(EmbedderConfig())
    started = time.perf_counter()
    for i in range(0, len(texts), 200):
        model.embed_sync(texts[i : i + 200])
    bare = time.perf_counter() - started
    report, seconds = sync(settings(root))
    return {
        "chunks": report.texts_embedded,
        "avg_chars": statistics.mean(map(len, texts)),
        "syncd_chunks_per_s": report.texts_embedded / seconds,
        "bare_chunks_per_s": len(texts) / bare,
        "ratio": bare / seconds,
    }


def walk(root: Path) -> int:
    count, stack = 0, [root]
    while stack:
        for entry in os.scandir(stack.pop()):
            if entry.is_dir():
                stack.append(Path(entry.path))
            else:
                entry.stat()
                count += 1
    return count


def noop_reconcile(work: Path, sizes: list[int]) -> dict[str, Any]:
    """3 and 7. No-op reconcile cost by size (vs. a bare scandir+stat walk), peak RSS."""
    api = FakeEmbedAPI(dimension=64).start()
    rows = []
    try:
        for n in sizes:
            root = work / f"noop-{n}"
            write_corpus(root / "docs", n, paragraphs=1, words=20)
            config = settings(root, embedder=ai21(api, max_concurrency=2))
            first, first_rss = syncd("resync", config=root / "config.yaml")
            noop = [sync(config)[1] for _ in range(3)]
            cli, noop_rss = syncd("resync", config=root / "config.yaml")
            started = time.perf_counter()
            walk(root / "docs")
            floor = time.perf_counter() - started
            rows.append(
                {
                    "files": n,
                    "first_sync_seconds": first,
                    "first_sync_peak_rss_mb": first_rss,
                    "noop_seconds": statistics.median(noop),
                    "noop_files_per_s": n / statistics.median(noop),
                    "noop_cli_seconds": cli,
                    "noop_cli_peak_rss_mb": noop_rss,
                    "scandir_seconds": floor,
                    "ratio_to_scandir": floor / statistics.median(noop),
                }
            )
    finally:
        api.stop()
    return {"rows": rows}


def incremental(work: Path, files: int) -> dict[str, Any]:
    """4. Edit 1 % of the documents: texts embedded and seconds (on scenario 3's tree)."""
    root = work.parent / "noop_reconcile" / f"noop-{files}"
    api = FakeEmbedAPI(dimension=64).start()
    try:
        config = settings(root, embedder=ai21(api, max_concurrency=2))
        sync(config)
        edited = sorted((root / "docs").rglob("*.md"))[::100]
        for i, path in enumerate(edited):
            edit(path, i)
        report, seconds = sync(config)
    finally:
        api.stop()
    return {
        "files": files,
        "edited": len(edited),
        "texts_embedded": report.texts_embedded,
        "updated": report.updated,
        "seconds": seconds,
    }


def verify(work: Path, files: int) -> dict[str, Any]:
    """`syncd verify` over every point of a store (scenario 3's tree when it ran, else one
    built here): seconds and peak RSS of the command."""
    root = work.parent / "noop_reconcile" / f"noop-{files}"
    if not (root / "config.yaml").exists():
        root = work / f"verify-{files}"
        write_corpus(root / "docs", files, paragraphs=1, words=20)
    api = FakeEmbedAPI(dimension=64).start()
    try:
        settings(root, embedder=ai21(api, max_concurrency=2))
        syncd("resync", config=root / "config.yaml")
    finally:
        api.stop()
    # The embedder is not asked: its dimension was recorded by the sync.
    seconds, rss = syncd("verify", config=root / "config.yaml")
    return {"points": files, "seconds": seconds, "peak_rss_mb": rss, "target_seconds": 15}


def freshness(work: Path, samples: int) -> dict[str, Any]:
    """5. Write → searchable under `syncd run`, local model, default debounce (1 s)."""
    root = work / "fresh"
    shutil.copytree(Path(__file__).resolve().parent.parent / "sample-docs", root / "docs")
    port = free_port()
    settings(root, server={"listen": f"127.0.0.1:{port}"}, watch={"debounce_seconds": 1.0})
    took = []
    with daemon(root / "config.yaml", port):
        for i in range(samples):
            text = f"Fresh note {i}: " + document(10_000 + i, paragraphs=1, words=30)
            path = root / "docs" / f"fresh-{i}.md"
            started = time.perf_counter()
            path.write_text(text)
            until(lambda p=path.name, t=text: top_path(port, t) == p, 60)
            took.append(time.perf_counter() - started)
    return {
        "samples": samples,
        "debounce_seconds": 1.0,
        "p50": percentile(took, 50),
        "p95": percentile(took, 95),
        "all": took,
    }


def rate_limit(requests: int, rpm: int = 60) -> dict[str, Any]:
    """Issue 3: requests per minute achieved with a deep queue against a limit of `rpm`."""
    from syncd.config import EmbedderConfig
    from syncd.embedders.ai21 import AI21Embedder

    api = FakeEmbedAPI().start()

    async def go() -> None:
        e = AI21Embedder(EmbedderConfig(**ai21(api, requests_per_minute=rpm, max_concurrency=4)))
        await asyncio.gather(*(e.embed([f"t{i}"], "document") for i in range(requests)))
        await e.aclose()

    try:
        asyncio.run(go())
    finally:
        api.stop()
    times = sorted(r.at for r in api.log)
    achieved = (len(times) - 1) / (times[-1] - times[0]) * 60
    return {
        "limit_rpm": rpm,
        "requests": requests,
        "achieved_rpm": achieved,
        "ratio": achieved / rpm,
        "max_in_60s_window": max(sum(1 for u in times if t <= u < t + 60) for t in times),
    }


def redis_queue(
    work: Path, entries: int, samples: int, latency: float = 0.02, rounds: int = 1
) -> dict[str, Any]:
    """Issues 5 and 18: entries/s through `syncd run` vs. the bare client posting the same
    texts to the same fake API (its own process, `latency` per request); XADD → searchable.

    With `rounds`, both sides run that many times, alternated, each round with new texts
    (syncd would embed a text it has seen again no more), and the medians are compared.
    """
    import json

    from redis_server import RedisServer

    server = RedisServer(work)
    server.start()
    root = work / "queue"
    root.mkdir()
    port = free_port()
    source = {"name": "cms", "type": "redis", "url": server.url, "stream": "docs", "batch": 500}
    client = server.client()

    def drained() -> bool:
        group = client.xinfo_groups("docs")
        return bool(group) and group[0]["lag"] == 0 and group[0]["pending"] == 0

    bare_runs, syncd_runs, cpu_runs, store_cpu_runs = [], [], [], []
    try:
        with fake_api_process(64, latency) as (url, key):
            settings(
                root,
                sources=[source],
                embedder=ai21_at(url, key, max_concurrency=2),
                server={"listen": f"127.0.0.1:{port}"},
            )
            with daemon(root / "config.yaml", port) as proc:
                # Once per store, not per entry: the collection is made at the first write
                # (a remote API's dimension is known from its first answer).
                client.xadd("docs", {"op": "upsert", "id": "warm-up", "text": "Warm-up."})
                until(drained, 60)
                store = descendants(proc.pid)  # the embedded store's process
                for r in range(rounds):
                    numbers = range(r * entries, (r + 1) * entries)
                    texts = [document(i, paragraphs=1, words=30) for i in numbers]
                    chunks = [c.text for t in texts for c in chunk_text(t, 1000, 100, False)]
                    started = time.perf_counter()
                    asyncio.run(post_batches(url, key, chunks, 2))
                    bare_runs.append(time.perf_counter() - started)
                    cpu_before = process_cpu_seconds(proc.pid)
                    store_before = sum(map(process_cpu_seconds, store))
                    pipe = client.pipeline()
                    for i, text in zip(numbers, texts, strict=True):
                        fields = {"op": "upsert", "id": f"doc-{i}", "text": text}
                        pipe.xadd("docs", fields | {"metadata": json.dumps({"n": i})})
                    pipe.execute()
                    syncd_runs.append(until(drained, 600, every=0.05))
                    cpu_runs.append(process_cpu_seconds(proc.pid) - cpu_before)
                    store_cpu_runs.append(sum(map(process_cpu_seconds, store)) - store_before)
                took = []
                for i in range(samples):
                    text = f"Queue freshness probe {i}: " + document(
                        50_000 + i, paragraphs=1, words=20
                    )
                    started = time.perf_counter()
                    client.xadd("docs", {"op": "upsert", "id": f"probe-{i}", "text": text})
                    until(lambda t=text, i=i: top_path(port, t) == f"probe-{i}", 60)
                    took.append(time.perf_counter() - started)
    finally:
        server.stop()
    seconds, bare = statistics.median(syncd_runs), statistics.median(bare_runs)
    return {
        "entries": entries,
        "latency": latency,
        "rounds": rounds,
        "seconds": seconds,
        "entries_per_s": entries / seconds,
        "bare_seconds": bare,
        "bare_entries_per_s": entries / bare,
        "ratio": bare / seconds,
        "ratios": [b / s for b, s in zip(bare_runs, syncd_runs, strict=True)],
        "daemon_cpu_seconds": statistics.median(cpu_runs),
        "store_cpu_seconds": statistics.median(store_cpu_runs),
        "latency_p50": percentile(took, 50),
        "latency_p95": percentile(took, 95),
    }


def peer_langchain(work: Path, files: int) -> dict[str, Any]:
    """6. LangChain index() (SQLRecordManager, Qdrant, incremental cleanup) vs. syncd."""
    from langchain_community.indexes._sql_record_manager import SQLRecordManager
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.indexing import index
    from langchain_qdrant import QdrantVectorStore
    from langchain_text_splitters import RecursiveCharacterTextSplitter
    from qdrant_client import QdrantClient
    from qdrant_client import models as m

    api = FakeEmbedAPI(dimension=64).start()

    class FakeAPIEmbeddings(Embeddings):
        """The same fake API over HTTP, in batches of 200, as syncd uses it."""

        def __init__(self) -> None:
            self.client = httpx.Client(headers={"Authorization": f"Bearer {api.key}"}, timeout=60)

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            out = []
            for i in range(0, len(texts), 200):
                r = self.client.post(
                    f"{api.url}/embed", json={"texts": texts[i : i + 200], "type": "segment"}
                )
                out += [x["embedding"] for x in r.json()["results"]]
            return out

        def embed_query(self, text: str) -> list[float]:
            return self.embed_documents([text])[0]

    root = work / "peer"
    paths = write_corpus(root / "docs", files, paragraphs=8)
    splitter = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=100)

    def load() -> list[Document]:
        return splitter.split_documents(
            [
                Document(p.read_text(), metadata={"source": str(p)})
                for p in sorted((root / "docs").rglob("*.md"))
            ]
        )

    client = QdrantClient(location=":memory:")
    client.create_collection(
        "lc", vectors_config=m.VectorParams(size=64, distance=m.Distance.COSINE)
    )
    store = QdrantVectorStore(client, "lc", FakeAPIEmbeddings())
    manager = SQLRecordManager("lc", db_url=f"sqlite:///{root / 'records.db'}")
    manager.create_schema()

    def lc_index() -> tuple[float, int]:
        sent = len(api.texts())
        started = time.perf_counter()
        index(load(), manager, store, cleanup="incremental", source_id_key="source", batch_size=200)
        return time.perf_counter() - started, len(api.texts()) - sent

    def syncd_steps(config) -> list[tuple[float, int]]:
        async def go() -> list[tuple[float, int]]:
            from syncd.engine import opened

            out = []
            async with opened(config) as engine:
                for step in ("first", "noop", "edit"):
                    if step == "edit":
                        for i, p in enumerate(paths[::100]):
                            edit(p, i)
                    started = time.perf_counter()
                    report = await engine.resync()
                    out.append((time.perf_counter() - started, report.texts_embedded))
            return out

        return asyncio.run(go())

    try:
        lc = [lc_index(), lc_index()]
        for i, p in enumerate(paths[::100]):
            edit(p, i)
        lc.append(lc_index())
        # syncd on the same (now edited) corpus from scratch, with the same in-memory Qdrant
        # kind (qdrant-client's local mode), so only the sync logic differs; edits re-applied.
        write_corpus(root / "docs", files, paragraphs=8)
        config = settings(
            root / "syncd-mem",
            sources=[{"name": "docs", "path": str(root / "docs")}],
            embedder=ai21(api, max_concurrency=1),
            qdrant={"url": ":memory:"},
        )
        mem = syncd_steps(config)
        write_corpus(root / "docs", files, paragraphs=8)
        edge = syncd_steps(
            settings(
                root / "syncd-edge",
                sources=[{"name": "docs", "path": str(root / "docs")}],
                embedder=ai21(api, max_concurrency=1),
            )
        )
    finally:
        api.stop()
    names = ("first_sync", "noop", "edit_1pct")
    out: dict[str, Any] = {"files": files}
    for i, name in enumerate(names):
        out[name] = {
            "langchain_seconds": lc[i][0],
            "langchain_texts": lc[i][1],
            "syncd_seconds": mem[i][0],
            "syncd_texts": mem[i][1],
            "syncd_edge_seconds": edge[i][0],
            "syncd_edge_texts": edge[i][1],
            "speedup": lc[i][0] / mem[i][0],
        }
    return out
