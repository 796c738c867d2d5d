"""`syncd migrate`: the embedded store to a Qdrant server (the stand-in) and back, embedding
nothing, resumable after kill -9, verified by counts per source and a sample of vectors."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from syncd import migrate as migration
from syncd.config import QdrantConfig, load_config
from syncd.engine import opened
from syncd.errors import SyncdError
from syncd.state import State
from syncd.store import Identity, PointData, Record, SearchQuery, open_store, point_id

DIMENSION = 32
# Texts of varied words and lengths, so BM25 scores rarely tie (engines order ties freely).
WORDS = [f"{a}{b}" for a in ("tide", "bee", "glass", "map", "salt", "fern") for b in range(80)]
SOURCES = [{"name": "docs", "path": "./docs"}, {"name": "notes", "path": "./notes"}]


def fill_embedded(path: Path, n: int) -> None:
    """`n` points of two sources, written by syncd's own store (BM25 from the text)."""
    rng = np.random.default_rng(7)
    store = open_store(
        QdrantConfig(path=path, collection="syncd"), Identity("local:test", DIMENSION)
    )
    points = []
    for i in range(n):
        source, path_, index = ("notes" if i % 3 == 0 else "docs"), f"doc{i // 10}.md", i % 10
        payload = {
            "source": source,
            "path": path_,
            "chunk_index": index,
            "chunk_count": 10,
            "text": " ".join(rng.choice(WORDS, size=rng.integers(5, 60))),
            "chunk_hash": f"hash-{i}",
            "doc_hash": f"doc-{i // 10}",
            "mtime": 1700000000.5,
            "metadata": {"n": i % 5},
            "format": "text/markdown",
        }
        vector = rng.standard_normal(DIMENSION).astype(np.float32)
        points.append(PointData(point_id(source, path_, index), vector, payload))
    for i in range(0, n, 1000):
        store.upsert(points[i : i + 1000])
    store.close()


def every_point(config: QdrantConfig) -> dict[str, Record]:
    store = open_store(config, None, create=False)
    out, offset = {}, None
    while True:
        records, offset = store.scroll(offset)
        out.update((r.id, r) for r in records)
        if offset is None:
            break
    store.close()
    return out


def searches(config: QdrantConfig) -> list[list[tuple[float, str, str, int]]]:
    """Hits of each mode, as (score, source, path, chunk_index).

    RRF gives equal scores to equal ranks of the two lists, and engines order such ties
    freely, so hits are compared sorted by score, then by name.
    """
    store = open_store(config, None, create=False)
    rng = np.random.default_rng(1)
    found = []
    for mode, text in [("hybrid", "tide5 bee7 fern3"), ("dense", "x"), ("keyword", "salt13 map2")]:
        query = SearchQuery(text, dense=rng.standard_normal(DIMENSION), mode=mode, limit=10)
        hits = [
            (round(h.score, 4), h.payload["source"], h.payload["path"], h.payload["chunk_index"])
            for h in store.search(query)
        ]
        found.append(sorted(hits, key=lambda h: (-h[0], h[1:])))
    store.close()
    return found


def syncd(project: Path, *args: str, **kwargs) -> subprocess.Popen | subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "syncd", *args]
    return subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=300, **kwargs)


@pytest.fixture
def project(make_config, tmp_path) -> Path:
    make_config(sources=SOURCES, qdrant={"path": "./q"}, log={"format": "json"})
    return tmp_path


def test_migrate_to_a_server_survives_kill_9_and_copies_every_point_exactly(project, make_standin):
    fill_embedded(project / "q", 10_000)
    standin = make_standin()
    cmd = [sys.executable, "-m", "syncd", "migrate", "--to", standin.url, "--batch-size", "100"]
    first = subprocess.Popen(cmd, cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    key = f"to {standin.url} syncd"
    state = State(project / ".syncd" / "state.db")
    deadline = time.monotonic() + 120
    while (p := state.copy_progress(key)) is None or p.copied < 1000:
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    interrupted = state.copy_progress(key).copied
    state.close()
    client = standin.client()
    assert 1000 <= interrupted <= client.count("syncd").count < 10_000

    resumed = syncd(project, "migrate", "--to", standin.url)
    assert resumed.returncode == 0, resumed.stderr
    assert "migrate_resumed" in resumed.stderr
    assert f"resumed after {interrupted}" in resumed.stdout
    assert f"url: {standin.url}" in resumed.stdout
    assert "verified the counts of 2 sources and 100 points" in resumed.stdout

    embedded = QdrantConfig(path=project / "q", collection="syncd")
    server = QdrantConfig(path=None, url=standin.url, collection="syncd")
    before, after = every_point(embedded), every_point(server)
    assert len(after) == 10_000 and set(after) == set(before)
    for pid, r in before.items():
        copy = after[pid]
        assert copy.payload == r.payload
        assert copy.dense == pytest.approx(r.dense, abs=1e-6)
        assert list(copy.bm25.indices) == list(r.bm25.indices)
        assert list(copy.bm25.values) == pytest.approx(list(r.bm25.values))
    assert client.count("syncd").count == 10_000
    client.close()
    assert searches(server) == searches(embedded)
    info = open_store(server, None, create=False)
    assert info.identity == Identity("local:test", DIMENSION)
    assert info.count_by_source() == {"docs": 6666, "notes": 3334}
    info.close()


def test_migrate_from_a_server_gives_an_embedded_copy_that_resyncs_without_embedding(
    docs, make_config, make_standin, resync, embedder
):
    for topic in ("tides", "bees", "glass"):
        text = "\n\n".join(
            f"Paragraph {n} about {topic}, with an example {n * 7}." for n in range(30)
        )
        (docs / f"{topic}.md").write_text(f"# {topic}\n\n{text}")
    standin = make_standin()
    on_server = load_config(
        make_config(qdrant={"url": standin.url, "collection": "team"}, state={"path": "./team.db"})
    )
    assert resync(on_server).added == 3
    laptop = load_config(make_config())
    report = migration.migrate(laptop, "from", standin.url, "team")
    assert report.copied == sum(report.counts.values()) > 3
    assert report.counts == {"docs": report.copied}
    embedder.reset()
    again = resync(laptop)
    assert again.unchanged == 3 and embedder.texts == []

    async def ask(settings):
        async with opened(settings, create=False, embedder=embedder) as engine:
            # dense: six chunks of like texts tie on BM25, which engines order freely
            hits = await engine.search(SearchQuery("bees 21", mode="dense", limit=5))
            return [(round(h.score, 4), h.payload["path"], h.payload["chunk_index"]) for h in hits]

    # the server first: qdrant-client's version check (a thread) ends before the stand-in does
    hits = asyncio.run(ask(on_server))
    assert len(hits) == 5
    assert asyncio.run(ask(laptop)) == hits


def test_verify_finds_a_point_that_differs(tmp_path, make_standin):
    fill_embedded(tmp_path / "q", 50)
    source = open_store(QdrantConfig(path=tmp_path / "q", collection="syncd"), None, create=False)
    standin = make_standin()
    target = open_store(QdrantConfig(path=None, url=standin.url, collection="c"), source.identity)
    records, _ = source.scroll(None, 100)
    target.upsert_records(records)
    assert migration.verify(source, target) == ({"docs": 33, "notes": 17}, 50)
    changed = records[0]
    target.upsert_records(
        [Record(changed.id, [-x for x in changed.dense], changed.bm25, changed.payload)]
    )
    with pytest.raises(
        SyncdError, match=f"point {changed.id} of the copy has another dense vector"
    ):
        migration.verify(source, target)
    target.upsert_records(
        [Record(changed.id, changed.dense, changed.bm25, {**changed.payload, "source": "x"})]
    )
    with pytest.raises(SyncdError, match="points per source differ"):
        migration.verify(source, target)
    source.close()
    target.close()


def test_usage_errors_exit_2_and_an_unreachable_server_exits_3(project, make_standin):
    fill_embedded(project / "q", 20)
    assert syncd(project, "migrate").returncode == 2
    assert syncd(project, "migrate", "--to", "http://a", "--from", "http://b").returncode == 2
    down = syncd(project, "migrate", "--to", "http://127.0.0.1:9")
    assert down.returncode == 3 and "unreachable" in down.stderr
    standin = make_standin()
    assert syncd(project, "migrate", "--to", standin.url).returncode == 0
    again = syncd(project, "migrate", "--to", standin.url)
    assert again.returncode == 2 and "already holds 20 points" in again.stderr
    empty = syncd(project, "migrate", "--from", standin.url, "--collection", "missing")
    assert empty.returncode == 2 and "nothing to migrate" in empty.stderr
