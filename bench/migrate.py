"""Migrate throughput: points per second from the embedded store to a Qdrant server and back.

The server is the stand-in of tests/qdrant_standin.py in its own process (Qdrant's REST
API over qdrant-client's local mode, one request at a time), so the figure is a floor
set by the stand-in, not by a real QdrantConfig, which takes parallel uploads.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.corpus import WORDS
from bench.harness import settings
from syncd import migrate as migration
from syncd.config import QdrantConfig
from syncd.store import Identity, PointData, open_store, point_id


def fill(path: Path, n: int, dimension: int = 384) -> None:
    rng = np.random.default_rng(0)
    store = open_store(
        QdrantConfig(path=path, collection="syncd"), Identity("local:bench", dimension)
    )
    for start in range(0, n, 1000):
        batch = []
        for i in range(start, min(start + 1000, n)):
            text = " ".join(rng.choice(WORDS, size=120))
            payload = {
                "source": "docs",
                "path": f"doc{i // 10}.md",
                "chunk_index": i % 10,
                "chunk_count": 10,
                "text": text,
                "chunk_hash": f"hash-{i}",
                "doc_hash": f"doc-{i // 10}",
                "mtime": 1700000000.0,
                "metadata": {},
                "format": "text/markdown",
            }
            vector = rng.standard_normal(dimension).astype(np.float32)
            batch.append(PointData(point_id("docs", payload["path"], i % 10), vector, payload))
        store.upsert(batch)
    store.close()


def migrate_throughput(work: Path, points: int) -> dict[str, Any]:
    """Copy `points` 384-dim points to the stand-in with 1 and 4 uploads in flight, then back."""
    # tests/ is on sys.path once bench.harness is imported
    from standin_process import StandinProcess

    fill(work / "q", points)
    standin = StandinProcess(work / "server").start()
    rows: dict[str, Any] = {"points": points}
    try:
        for parallel in (1, 4):
            config = settings(work / f"to-{parallel}", qdrant={"path": str(work / "q")})
            started = time.perf_counter()
            report = migration.migrate(
                config, "to", standin.url, f"copy{parallel}", None, parallel=parallel
            )
            seconds = time.perf_counter() - started
            assert report.copied == points
            rows[f"to_parallel_{parallel}_points_per_s"] = points / seconds
        back = settings(work / "back", qdrant={"path": str(work / "back" / "q")})
        started = time.perf_counter()
        report = migration.migrate(back, "from", standin.url, "copy4")
        assert report.copied == points
        rows["from_points_per_s"] = points / (time.perf_counter() - started)
    finally:
        standin.stop()
    return rows
