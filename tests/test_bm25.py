"""BM25 of many chunks in a worker process: the same vectors, and nothing lost when it dies."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import alive, gone_within

from syncd.store import bm25

TEXTS = [
    f"Chunk {i}: kubectl rollout restart deployment/web-{i} after the SKU-{i * 7} fix."
    for i in range(bm25.POOL_MIN_TEXTS)
]


def pairs(vectors) -> list[tuple[list[int], list[float]]]:
    return [(list(v.indices), list(v.values)) for v in vectors]


@pytest.fixture
def fresh_pool():
    bm25.stop()
    yield
    bm25.stop()


def worker_pids() -> list[int]:
    pool = bm25._pool
    return [p.pid for p in (pool._processes or {}).values()] if pool else []


def test_a_batch_computed_in_the_worker_equals_the_model_here(fresh_pool):
    embed = bm25.model().embed_document
    here = pairs(embed(t) for t in TEXTS)
    assert pairs(bm25.documents(TEXTS)) == here
    assert worker_pids(), "a batch this large goes to the worker"
    assert all(indices for indices, _ in here)


def test_a_worker_killed_costs_time_not_vectors(fresh_pool):
    expected = pairs(bm25.documents(TEXTS))
    (pid,) = worker_pids()
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    assert pairs(bm25.documents(TEXTS)) == expected  # computed here: the pool was broken
    assert pairs(bm25.documents(TEXTS)) == expected  # and a new worker takes the next
    assert worker_pids() and worker_pids() != [pid]


def test_the_worker_leaves_with_a_syncd_killed_with_9(tmp_path: Path):
    code = (
        "from syncd.store import bm25\n"
        f"texts = ['river stone lamp'] * {bm25.POOL_MIN_TEXTS}\n"
        "if __name__ == '__main__':\n"
        "    bm25.documents(texts)\n"
        "    print('worker', *[p.pid for p in bm25._pool._processes.values()], flush=True)\n"
        "    import time; time.sleep(60)\n"
    )
    script = tmp_path / "holder.py"
    script.write_text(code)
    with subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            line = next(line for line in holder.stdout if line.startswith("worker "))
            worker = int(line.split()[1])
            assert alive(worker)
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait(10)
            assert gone_within(worker, 10)
        finally:
            holder.kill()
