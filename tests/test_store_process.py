"""The embedded shard in a process of its own answers as in-process, and dies with syncd."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import alive, gone_within

from syncd.config import QdrantConfig
from syncd.errors import StoreError, StoreLocked, StoreMismatch
from syncd.store import Identity, PointData, SearchQuery, bm25, open_store, point_id, process
from syncd.store.edge import EdgeStore
from syncd.store.process import ShardProcess

IDENTITY = Identity("local:test", 4)


def points(source: str, path: str, n: int, seed: int) -> list[PointData]:
    rng = np.random.default_rng(seed)
    return [
        PointData(
            point_id(source, path, i),
            rng.standard_normal(4).astype(np.float32),
            {
                "source": source,
                "path": path,
                "chunk_index": i,
                "chunk_count": n,
                # "kubectl" a different number of times in each: no two BM25 scores tie (a
                # tie is ordered differently in every process, so a hybrid rank too).
                "text": f"{path} part {i}: " + "kubectl " * (seed * 10 + i) + f"SKU-{i}",
                "metadata": {"team": "ops" if i % 2 else "web", "n": i},
            },
        )
        for i in range(n)
    ]


def test_the_shard_answers_from_its_own_process_as_it_does_in_process(tmp_path):
    here = open_store(QdrantConfig(path=tmp_path / "here", collection="c"), IDENTITY)
    there = open_store(
        QdrantConfig(path=tmp_path / "there", collection="c"), IDENTITY, process=True
    )
    assert isinstance(here, EdgeStore) and isinstance(there, ShardProcess)
    assert there.identity == IDENTITY
    batch = points("s", "a.md", 5, 1) + points("s", "b.md", 3, 2) + points("t", "c.md", 2, 3)
    for store in (here, there):
        store.upsert(batch)
        store.trim("s", ["a.md"], keep=4)
        store.delete_documents("t", ["c.md"])
        store.optimize()
    query_vector = batch[0].vector
    queries = [
        SearchQuery("kubectl rollout", query_vector, mode, 5, source, where=where)
        for mode in ("hybrid", "dense", "keyword")
        for source, where in ((None, {}), ("s", {"team": "ops"}))
    ]
    for ask in (
        lambda s: s.count_by_source(),
        lambda s: (s.count("s"), s.count("t")),
        lambda s: s.chunk_counts("s"),
        lambda s: s.document("s", "a.md"),
        lambda s: sorted((p.id, p.payload["path"], p.dimension) for p in s.points("s")),
        lambda s: [(h.score, h.payload) for q in queries for h in s.search(q)],
        lambda s: sorted(
            (r.id, r.dense, list(r.bm25.indices), r.payload) for r in s.scroll(None, 100)[0]
        ),
        lambda s: [(r.id, list(r.bm25.values)) for r in s.retrieve([batch[1].id])],
    ):
        assert ask(there) == ask(here)
    assert (there.count("s"), there.count("t")) == (7, 0)
    here.close()
    there.close()
    reopened = open_store(QdrantConfig(path=tmp_path / "there", collection="c"), IDENTITY)
    assert reopened.chunk_counts("s") == {"a.md": 4, "b.md": 3}  # closed flushed
    reopened.close()


def test_bm25_is_computed_in_the_store_process_as_here(tmp_path):
    store = ShardProcess.open(tmp_path / "c", IDENTITY, rebuild=False, create=True)
    batch = points("s", "a.md", bm25.POOL_MIN_TEXTS, 4)  # a batch that here goes to a worker
    store.upsert(batch)
    (record,) = store.retrieve([batch[7].id])
    expected = bm25.model().embed_document(batch[7].payload["text"])
    assert (record.bm25.indices, record.bm25.values) == (expected.indices, expected.values)
    store.close()


def test_refusals_cross_from_the_store_process_and_leave_no_process(tmp_path):
    path = tmp_path / "c"
    ShardProcess.open(path, IDENTITY, rebuild=False, create=True).close()
    children = _children()
    with pytest.raises(StoreMismatch):
        ShardProcess.open(path, Identity("local:other", 8), rebuild=False, create=False)
    held = EdgeStore.open(path, IDENTITY, rebuild=False, create=False)
    with pytest.raises(StoreLocked):
        ShardProcess.open(path, IDENTITY, rebuild=False, create=False)
    held.close()
    assert ShardProcess.open(tmp_path / "none", IDENTITY, rebuild=False, create=False) is None
    process.discard_spare()  # that child had no shard: it was kept for the next open
    deadline = time.monotonic() + 10
    while _children() != children and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _children() == children


def test_the_prestarted_process_outlasts_a_probe_for_a_missing_shard(tmp_path):
    """The probe an embedder of unknown dimension makes first finds no shard; the store
    its first write creates must still get the process started early."""
    process.prestart()
    early = process._spare._proc.pid
    assert ShardProcess.open(tmp_path / "c", None, rebuild=False, create=False) is None
    store = ShardProcess.open(tmp_path / "c", IDENTITY, rebuild=False, create=True)
    assert store._proc.pid == early
    store.close()


def _children() -> set[int]:
    me = os.getpid()
    return {
        int(pid)
        for task in Path(f"/proc/{me}/task").iterdir()
        for pid in (task / "children").read_text().split()
        if alive(int(pid))
    }


def test_a_store_process_that_died_fails_one_call_and_the_next_starts_it_again(tmp_path):
    store = ShardProcess.open(tmp_path / "c", IDENTITY, rebuild=False, create=True)
    store.upsert(points("s", "a.md", 3, 5))
    first = store._proc.pid
    os.kill(first, signal.SIGKILL)
    with pytest.raises(StoreError, match="process exited"):
        store.upsert(points("s", "b.md", 2, 6))
    store.upsert(points("s", "b.md", 2, 6))  # the same write again: what a retry does
    assert store._proc.pid != first
    assert store.chunk_counts("s") == {"a.md": 3, "b.md": 2}
    store.close()


def test_sigterm_to_the_group_leaves_closing_the_store_to_syncd(tmp_path):
    store = ShardProcess.open(tmp_path / "c", IDENTITY, rebuild=False, create=True)
    store.upsert(points("s", "a.md", 3, 7))
    pid = store._proc.pid
    os.kill(pid, signal.SIGTERM)  # systemd's stop signals every process of the service
    os.kill(pid, signal.SIGINT)  # and Ctrl-C the whole foreground group
    time.sleep(0.3)
    assert alive(pid)
    store.upsert(points("s", "b.md", 1, 8))
    store.close()
    assert not alive(pid)
    reopened = EdgeStore.open(tmp_path / "c", IDENTITY, rebuild=False, create=False)
    assert reopened.chunk_counts("s") == {"a.md": 3, "b.md": 1}
    reopened.close()


def test_the_store_process_leaves_with_a_syncd_killed_with_9(tmp_path):
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from syncd.store import Identity\n"
        "from syncd.store.process import ShardProcess\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from test_store_process import points\n"
        "store = ShardProcess.open(Path(sys.argv[1]), Identity('local:test', 4), False, True)\n"
        "store.upsert(points('s', 'a.md', 3, 9))\n"
        "print('store', store._proc.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    tests = str(Path(__file__).parent)
    with subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "c"), tests], stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            line = next(line for line in holder.stdout if line.startswith("store "))
            child = int(line.split()[1])
            assert alive(child)
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait(10)
            assert gone_within(child, 10)
        finally:
            holder.kill()
    # The lock went with it, and the write it had answered is there.
    store = EdgeStore.open(tmp_path / "c", IDENTITY, rebuild=False, create=False)
    assert store.chunk_counts("s") == {"a.md": 3}
    store.close()
