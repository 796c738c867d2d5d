"""The embedded shard in a process of its own, for the commands that sync.

Qdrant Edge holds the GIL while it takes points, and turning a payload into Edge's own
holds it longest: each string value is tried as a bool, an int and a float first, about
60 µs a point of syncd's payload. In syncd's process that time is taken from the event
loop, the embedding requests and SQLite. Here a child process owns the shard, computes
BM25 and builds the points on its own core; syncd sends each batch as one array of
vectors and a list of payloads, and waits (the GIL released) for the answer. A write is
answered once Edge has it, as in-process, so the state still records only what is stored.

The child is started with the interpreter (not multiprocessing, so a script that drives
the engine needs no `__main__` guard) and talks over a socket pair. It dies with syncd
(`kill -9` included), so the shard's lock goes with it. If it dies on its own, the call
fails as the store refusing would, and the next call starts it again.
"""

from __future__ import annotations

import copyreg
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import qdrant_edge as qe
import structlog

from syncd.errors import StoreError, SyncdError
from syncd.store import (
    UPGRADE_BATCH,
    Hit,
    Identity,
    PointData,
    Record,
    SearchQuery,
    StoredPoint,
)

log = structlog.get_logger(__name__)

# Records cross the pipe (a rebuild of the state scrolls the store); Edge's own sparse
# vector does not pickle.
copyreg.pickle(qe.SparseVector, lambda s: (_sparse, (s.indices, s.values)))


def _sparse(indices: list[int], values: list[float]) -> qe.SparseVector:
    return qe.SparseVector(indices=indices, values=values)


class ShardProcess:
    """A `Store` whose calls are answered by an `EdgeStore` in a child process."""

    @classmethod
    def open(
        cls, path: Path, identity: Identity | None, rebuild: bool, create: bool
    ) -> ShardProcess | None:
        """As `EdgeStore.open`, in the child `prestart` started, or in one started here."""
        store = _take_spare() or cls(path)
        store._path = path
        try:
            found = store._call("open", path, identity, rebuild, create)
        except BaseException:  # refused (another embedder's, locked): the child goes
            store._stop()
            raise
        if found is None:
            # No shard there, and none open in the child: it stays the spare, for the
            # store a first write creates (the probe of an embedder whose dimension is
            # not known yet comes here first, and would otherwise spend the prestart).
            _keep_spare(store)
            return None
        store.identity = found
        return store

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._proc: subprocess.Popen | None = None
        self.identity = Identity("", 0)

    # -- the Store protocol ---------------------------------------------------------------

    def upsert(self, points: list[PointData]) -> None:
        if points:
            import numpy as np

            dense = np.stack([p.vector for p in points]).astype(np.float32, copy=False)
            ids, payloads = [p.id for p in points], [p.payload for p in points]
            self._call("upsert", ids, dense.tobytes(), dense.shape[1], payloads)

    def upsert_records(self, records: list[Record]) -> None:
        self._call("upsert_records", records)

    def scroll(
        self, offset: str | None = None, limit: int = UPGRADE_BATCH
    ) -> tuple[list[Record], str | None]:
        return self._call("scroll", offset, limit)

    def retrieve(self, ids: list[str]) -> list[Record]:
        return self._call("retrieve", ids)

    def count_by_source(self) -> dict[str, int]:
        return self._call("count_by_source")

    def delete_documents(self, source: str, paths: list[str]) -> None:
        self._call("delete_documents", source, paths)

    def trim(self, source: str, paths: list[str], keep: int) -> None:
        self._call("trim", source, paths, keep)

    def count(self, source: str) -> int:
        return self._call("count", source)

    def chunk_counts(self, source: str) -> dict[str, int]:
        return self._call("chunk_counts", source)

    def search(self, query: SearchQuery) -> list[Hit]:
        return self._call("search", query)

    def document(self, source: str, path: str) -> list[dict[str, Any]]:
        return self._call("document", source, path)

    def points(self, source: str) -> Iterator[StoredPoint]:
        offset = None
        while True:
            page, offset = self._call("points_page", source, offset)
            yield from page
            if offset is None:
                return

    def delete_points(self, ids: list[str]) -> None:
        self._call("delete_points", ids)

    def optimize(self) -> None:
        self._call("optimize")

    def close(self) -> None:
        """Flushes, optimizes and releases the shard; returns once the child has exited."""
        with self._lock:
            if self._conn is None:
                return
            try:
                self._request(("close", ()))
            finally:
                self._stop()

    # -- the child ------------------------------------------------------------------------

    def _call(self, method: str, *args: Any) -> Any:
        with self._lock:
            if self._conn is None:
                self._start()
            return self._request((method, args))

    def _request(self, message: tuple[str, tuple]) -> Any:
        try:
            self._conn.send(message)
            ok, value = self._conn.recv()
        except (EOFError, OSError) as e:
            code = self._stop()
            raise StoreError(f"the embedded store's process exited ({code}): {e}") from None
        if not ok:
            raise value
        return value

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        started: list[subprocess.Popen] = []
        ready = threading.Event()

        def keep() -> None:
            # The child dies with this thread (see children.py), which waits for it.
            try:
                started.append(
                    subprocess.Popen(
                        [sys.executable, "-m", __name__, str(theirs.fileno()), str(os.getpid())],
                        pass_fds=[theirs.fileno()],
                        env=os.environ | {_LOG_ENV: _log_config()},
                    )
                )
            finally:
                ready.set()
            started[0].wait()

        threading.Thread(target=keep, name="syncd-store", daemon=True).start()
        ready.wait()
        theirs.close()
        if not started:
            ours.close()
            raise StoreError("could not start the embedded store's process")
        self._proc, self._conn = started[0], Connection(ours.detach())
        if self.identity.dimension:  # started again after it died: the shard it had
            self._request(("open", (self._path, self.identity, False, False)))
        log.debug("store_process_started", pid=self._proc.pid, path=str(self._path))

    def _stop(self) -> int | None:
        conn, proc, self._conn, self._proc = self._conn, self._proc, None, None
        if conn is not None:
            conn.close()
        if proc is None:
            return None
        try:
            return proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()


_spare: ShardProcess | None = None
_spare_lock = threading.Lock()


def prestart() -> None:
    """Start a store process now, for the next `ShardProcess.open` to take: its start-up
    (the interpreter and Edge, about a quarter of a second) then overlaps the embedder's
    and the first requests instead of holding up the first write."""
    global _spare
    with _spare_lock:
        if _spare is None:
            spare = ShardProcess(Path())
            spare._start()
            _spare = spare


def discard_spare() -> None:
    """Stop a prestarted process that no store took (the command ended first)."""
    spare = _take_spare()
    if spare is not None:
        spare.close()


def _keep_spare(store: ShardProcess) -> None:
    global _spare
    with _spare_lock:
        if _spare is None:
            store, _spare = None, store
    if store is not None:
        store.close()


def _take_spare() -> ShardProcess | None:
    global _spare
    with _spare_lock:
        spare, _spare = _spare, None
    return spare


_LOG_ENV = "SYNCD_STORE_LOG"


def _log_config() -> str:
    from syncd import logs

    c = logs.configured
    return json.dumps({"level": c.level, "format": c.format} if c else {})


# -- in the child -----------------------------------------------------------------------------


def _serve(conn: Connection) -> None:
    from syncd.store.edge import EdgeStore

    store: EdgeStore | None = None
    while True:
        try:
            method, args = conn.recv()
        except EOFError:  # syncd closed its end without closing the store
            break
        try:
            if method == "open":
                store = EdgeStore.open(*args)
                value = None if store is None else store.identity
            elif method == "upsert":
                store.upsert_records(_records(*args))
                value = None
            elif method == "close":
                if store is not None:
                    store.close()
                store = value = None
            else:
                value = getattr(store, method)(*args)
            answer = (True, value)
        except SyncdError as e:
            answer = (False, e)
        except Exception as e:  # a bug here must fail the call, not kill the store
            answer = (False, StoreError(f"the embedded store failed: {type(e).__name__}: {e}"))
        conn.send(answer)
        if method == "close":
            break
    if store is not None:
        store.close()


def _records(ids: list[str], dense: bytes, dimension: int, payloads: list[dict]) -> list[Record]:
    """As `to_records` makes them, from the vectors' bytes: without numpy, this process
    is 11 MB smaller."""
    from syncd.store import bm25

    rows = memoryview(dense).cast("f")
    sparse = bm25.documents([p.get("text", "") for p in payloads])
    return [
        Record(point, rows[n * dimension : (n + 1) * dimension].tolist(), sparse[n], payload)
        for n, (point, payload) in enumerate(zip(ids, payloads, strict=True))
    ]


def main(argv: list[str]) -> None:
    from syncd.children import die_with_parent
    from syncd.config import LogConfig
    from syncd.logs import configure_logging
    from syncd.store import bm25

    fd, parent = int(argv[0]), int(argv[1])
    die_with_parent(parent)
    # Ctrl-C and systemd's stop reach every process of the group: syncd closes the store
    # (flushed) as it shuts down, and this process ends with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(LogConfig(**json.loads(os.environ.get(_LOG_ENV) or "{}")))
    bm25.worker_allowed = False
    _serve(Connection(fd))


if __name__ == "__main__":
    # By its own name, so that what it pickles is found under that name by syncd.
    from syncd.store import process

    process.main(sys.argv[1:])
