"""BM25 of chunk texts: Qdrant's own model, in a worker process when there are many.

`qdrant_edge.Bm25` holds the GIL for the whole of a text, 40 to 80 µs a chunk that the
event loop, the embedding requests and Edge used to wait for: a first sync against a fast
API lost a tenth of its chunks/s to it. A batch of `POOL_MIN_TEXTS` or more goes to one
spawned worker instead; taking its answer back (token ids and weights) costs this process
about 5 µs a chunk. Small batches (a watched edit, a search's query) are computed here,
and so is any batch the worker cannot take: a worker that died or hangs costs time, never
a vector.
"""

from __future__ import annotations

import atexit
import functools
import os
import threading
import time
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

    import qdrant_edge as qe

log = structlog.get_logger()

POOL_MIN_TEXTS = 256
#: False in the embedded store's own process (store/process.py): it has a core to itself.
worker_allowed = True
# Far beyond what a batch takes (1,000 chunks: under 0.1 s); past it, computed here.
_TIMEOUT_SECONDS = 60

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None


@functools.cache
def model() -> qe.Bm25:
    import qdrant_edge as qe  # here: `status` and `--version` need not load the engine

    return qe.Bm25()


def documents(texts: list[str]) -> list[qe.SparseVector]:
    """The BM25 document vector of each text, in order."""
    if worker_allowed and len(texts) >= POOL_MIN_TEXTS:
        pairs = _in_worker(texts)
        if pairs is not None:
            import qdrant_edge as qe

            return [qe.SparseVector(indices=i, values=v) for i, v in pairs]
    embed = model().embed_document
    return [embed(text) for text in texts]


def _in_worker(texts: list[str]) -> list[tuple[list[int], list[float]]] | None:
    global _pool
    from concurrent.futures import BrokenExecutor, ProcessPoolExecutor
    from concurrent.futures import TimeoutError as Timeout
    from multiprocessing import get_context

    with _lock:
        if _pool is None:
            # Spawned, not forked: the daemon runs threads.
            _pool = ProcessPoolExecutor(
                1, get_context("spawn"), initializer=_watch_parent, initargs=(os.getpid(),)
            )
            atexit.register(stop)  # before the interpreter tears down what shutdown needs
            log.info("bm25_worker_started", texts=len(texts))
        pool = _pool
    try:
        return pool.submit(_embed, texts).result(_TIMEOUT_SECONDS)
    except (BrokenExecutor, Timeout, OSError, RuntimeError) as e:
        log.warning("bm25_worker_failed", error=f"{type(e).__name__}: {e}", texts=len(texts))
        with _lock:
            if _pool is pool:
                _pool = None
        # A hung worker would be waited for at exit: kill it (the executor has no API).
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.kill()
        return None


def stop() -> None:
    """Let the worker go now (otherwise it goes at exit); the next large batch starts one."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(cancel_futures=True)


def _embed(texts: list[str]) -> list[tuple[list[int], list[float]]]:
    embed = model().embed_document
    return [(list(s.indices), list(s.values)) for s in map(embed, texts)]


def _watch_parent(parent: int) -> None:
    """In the worker: leave when syncd is gone, even killed with -9 (the worker holds both
    ends of its task pipe, so it would never see end-of-file)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
