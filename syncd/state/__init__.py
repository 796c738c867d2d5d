"""Everything SQLite: schema, migrations and the queries syncd makes of its own state.

A document row is written only after its points are in Qdrant, so after a crash the
state never claims more than the store holds; the engine repairs the other direction.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from syncd.errors import ConfigError, StateError

if TYPE_CHECKING:  # imported where vectors are read, so `syncd status` skips numpy
    import numpy as np

from syncd.state.rows import (
    CopyProgress,
    DocRow,
    QueuedText,
    SourceStatus,
    StoredChunk,
    SwitchProgress,
    Synced,
)
from syncd.state.schema import MIGRATIONS

__all__ = [
    "CopyProgress",
    "DocRow",
    "QueuedText",
    "SourceStatus",
    "State",
    "StoredChunk",
    "SwitchProgress",
    "Synced",
    "open_state",
]


# How stale a used vector's `last_used` may get before it is stamped again.
_STAMP_EVERY_SECONDS = 3600.0

P = ParamSpec("P")
R = TypeVar("R")


def _translated(method: Callable[P, R]) -> Callable[P, R]:
    """sqlite3's exceptions → StateError (a full disk, a corrupt or locked file); one
    call at a time, since the vector cache is written from a thread."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            with args[0]._lock:
                return method(*args, **kwargs)
        except sqlite3.Error as e:
            raise StateError(f"state database: {e}") from e

    return wrapper


def open_state(path: Path) -> tuple[State, Path | None]:
    """The state, and where an unreadable file was moved aside (None if it was not).

    A file SQLite calls corrupt or not a database is kept for inspection as
    `state.db.corrupt-<timestamp>` (with its -wal), and a fresh state takes its place,
    for the engine to rebuild from the store. Other failures (permissions, a locked or
    missing directory) stay errors: moving the file would not help.
    """
    try:
        return State(path), None
    except ConfigError as e:
        cause = e.__cause__
        if getattr(cause, "sqlite_errorcode", None) not in (
            sqlite3.SQLITE_CORRUPT,
            sqlite3.SQLITE_NOTADB,
        ):
            raise
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
    for suffix in ("", "-wal", "-shm"):
        moved = path.with_name(path.name + suffix)
        if moved.exists():
            moved.rename(aside.with_name(aside.name + suffix))
    return State(path), aside


class State:
    def __init__(self, path: Path) -> None:
        self._lock = threading.RLock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA busy_timeout=10000")
            self._migrate()
        except (OSError, sqlite3.Error) as e:
            raise ConfigError(f"state.path: cannot open {path}: {e}") from e

    @_translated
    def close(self) -> None:
        self.db.close()

    def _migrate(self) -> None:
        done = self.db.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[done:], start=done + 1):
            with self.transaction():
                for statement in script.split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version={number}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- the embedder the vectors belong to ---------------------------------------------

    @_translated
    def use_embedder(self, model_id: str, dimension: int) -> None:
        """Forget cached vectors made by another embedder; remember this one's dimension,
        so the next start need not ask a remote API for it."""
        row = self.db.execute("SELECT value FROM meta WHERE key='embedder'").fetchone()
        with self.transaction() as db:
            if not row or row[0] != model_id:
                db.execute("DELETE FROM vectors")
                db.execute("INSERT OR REPLACE INTO meta VALUES ('embedder', ?)", (model_id,))
            if dimension:  # 0: not known until a remote API's first answer
                db.execute("INSERT OR REPLACE INTO meta VALUES ('dimension', ?)", (str(dimension),))

    @_translated
    def known_dimension(self, model_id: str) -> int | None:
        """The dimension recorded for this embedder by an earlier run, if any."""
        rows = dict(self.db.execute("SELECT key, value FROM meta"))
        if rows.get("embedder") != model_id or "dimension" not in rows:
            return None
        return int(rows["dimension"])

    @_translated
    def embedder(self) -> str | None:
        """The embedder the cached vectors belong to; None in a state never used to sync."""
        row = self.db.execute("SELECT value FROM meta WHERE key='embedder'").fetchone()
        return row[0] if row else None

    @_translated
    def store_seal(self) -> str | None:
        """What `seal_store` recorded: the store's files when they last held exactly the
        points this state expects; None when the store has been opened since."""
        row = self.db.execute("SELECT value FROM meta WHERE key='store_seal'").fetchone()
        return row[0] if row else None

    @_translated
    def seal_store(self, seal: str | None) -> None:
        if seal is None:
            self.db.execute("DELETE FROM meta WHERE key='store_seal'")
        else:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('store_seal', ?)", (seal,))

    @_translated
    def restore(self, pages: Iterable[list[StoredChunk]], model_id: str) -> tuple[int, int]:
        """Fill an empty state from the store's points, all or nothing; (documents, chunks).

        The size is unknown (-1), so the next plan reads each file once and compares its
        hash instead of trusting size + mtime; unchanged files then cost no embedding.
        Recording the embedder last marks the state as in use.
        """
        chunks = 0
        with self.transaction() as db:
            for page in pages:
                page = [c for c in page if 0 <= c.chunk_index < c.chunk_count]
                db.executemany(
                    "INSERT OR IGNORE INTO documents VALUES (?, ?, -1, ?, ?, ?, 'done', NULL, 0, ?)",
                    [
                        (c.source, c.path, c.mtime_ns, c.doc_hash, c.chunk_count, time.time())
                        for c in page
                    ],
                )
                db.executemany(
                    "INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?)",
                    [(c.source, c.path, c.chunk_index, c.chunk_hash) for c in page],
                )
                db.executemany(
                    "INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)",
                    [(c.chunk_hash, c.vector.tobytes(), time.time()) for c in page],
                )
                chunks += len(page)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('embedder', ?)", (model_id,))
            documents = db.execute("SELECT count(*) FROM documents").fetchone()[0]
        return documents, chunks

    # -- the next embedder, whose index is built beside the active one -------------------

    @_translated
    def next_embedder(self) -> str | None:
        """The embedder whose index is being built; None when there is none."""
        row = self.db.execute("SELECT value FROM meta WHERE key='embedder_next'").fetchone()
        return row[0] if row else None

    @_translated
    def use_next_embedder(self, model_id: str | None) -> None:
        """Build for this embedder (None: for none); another one's vectors and progress go."""
        if self.next_embedder() == model_id:
            return
        with self.transaction() as db:
            db.execute("DELETE FROM next_vectors")
            db.execute("DELETE FROM copy_progress WHERE target LIKE 'switch %'")
            db.execute("DELETE FROM meta WHERE key='embedder_next'")
            if model_id is not None:
                db.execute("INSERT INTO meta VALUES ('embedder_next', ?)", (model_id,))

    @_translated
    def begin_switch(self) -> None:
        """The next index is complete: from here on the switch is finished, even after a crash."""
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('switching', '1')")

    @_translated
    def switching(self) -> str | None:
        """The embedder a switch that began but did not finish goes to."""
        rows = dict(self.db.execute("SELECT key, value FROM meta"))
        return rows.get("embedder_next") if "switching" in rows else None

    @_translated
    def finish_switch(self, dimension: int) -> None:
        """The next embedder is the active one: its vectors become the cache, in one step."""
        model_id = self.next_embedder()
        with self.transaction() as db:
            db.execute("DELETE FROM vectors")
            db.execute(
                "INSERT INTO vectors SELECT chunk_hash, vector, ? FROM next_vectors", (time.time(),)
            )
            db.execute("DELETE FROM next_vectors")
            db.execute("DELETE FROM copy_progress WHERE target LIKE 'switch %'")
            db.execute("DELETE FROM meta WHERE key IN ('embedder_next', 'switching')")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('embedder', ?)", (model_id,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('dimension', ?)", (str(dimension),))

    @_translated
    def switch_progress(self) -> SwitchProgress | None:
        model_id = self.next_embedder()
        if model_id is None:
            return None
        progress = self.copy_progress(f"switch {model_id}") or CopyProgress(None, 0)
        total = self.db.execute("SELECT count(*) FROM chunks").fetchone()[0]
        return SwitchProgress(model_id, progress.copied, total, progress.started_at)

    @_translated
    def next_vectors(self, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        return self._vectors("next_vectors", hashes)

    @_translated
    def add_next_vectors(self, vectors: dict[str, np.ndarray]) -> None:
        import numpy as np

        self.db.executemany(
            "INSERT OR REPLACE INTO next_vectors VALUES (?, ?)",
            [(h, np.asarray(v, dtype=np.float32).tobytes()) for h, v in vectors.items()],
        )

    # -- migrate's progress ---------------------------------------------------------------

    @_translated
    def copy_progress(self, target: str) -> CopyProgress | None:
        row = self.db.execute(
            "SELECT next_offset, copied, started_at FROM copy_progress WHERE target=?", (target,)
        ).fetchone()
        return CopyProgress(*row) if row else None

    @_translated
    def save_copy_progress(self, target: str, progress: CopyProgress) -> None:
        self.db.execute(
            """INSERT INTO copy_progress VALUES (?, ?, ?, ?) ON CONFLICT (target) DO UPDATE
               SET next_offset=excluded.next_offset, copied=excluded.copied""",
            (target, progress.next_offset, progress.copied, time.time()),
        )

    @_translated
    def finish_copy(self, target: str) -> None:
        self.db.execute("DELETE FROM copy_progress WHERE target=?", (target,))

    # -- documents ----------------------------------------------------------------------

    @_translated
    def documents(self, source: str, paths: Iterable[str] | None = None) -> dict[str, DocRow]:
        """All the source's documents, or just these paths (a queue batch need not read
        every row of a large source)."""
        sql = "SELECT * FROM documents WHERE source=?"
        return {r[1]: DocRow(*r) for r in self._rows(sql, source, paths)}

    def each_document(self, source: str, paths: Iterable[str] | None = None) -> Iterator[DocRow]:
        """The documents of a source (or those at `paths`) in path order, a row at a time:
        a reconcile of a million files need not hold a million rows."""
        sql = "SELECT * FROM documents WHERE source=?"
        try:
            if paths is None:
                yield from map(DocRow._make, self.db.execute(f"{sql} ORDER BY path", (source,)))
                return
            keys = sorted(set(paths))
            for i in range(0, len(keys), 500):
                part = keys[i : i + 500]
                rows = self.db.execute(
                    f"{sql} AND path IN ({','.join('?' * len(part))}) ORDER BY path",
                    [source, *part],
                )
                yield from map(DocRow._make, rows)
        except sqlite3.Error as e:  # `_translated` cannot reach into a generator
            raise StateError(f"state database: {e}") from e

    @_translated
    def chunk_total(self, source: str) -> int:
        """The points the store should hold for the source."""
        return self.db.execute(
            "SELECT coalesce(sum(chunk_count), 0) FROM documents WHERE source=?", (source,)
        ).fetchone()[0]

    @_translated
    def document_count(self, source: str) -> int:
        return self.db.execute(
            "SELECT count(*) FROM documents WHERE source=?", (source,)
        ).fetchone()[0]

    @_translated
    def chunk_hashes(self, source: str) -> dict[str, list[str]]:
        """path → the hashes of its chunks in order, as last synced."""
        out: dict[str, list[str]] = {}
        rows = self.db.execute(
            "SELECT path, chunk_hash FROM chunks WHERE source=? ORDER BY path, chunk_index",
            (source,),
        )
        for path, chunk_hash in rows:
            out.setdefault(path, []).append(chunk_hash)
        return out

    @_translated
    def record_synced(self, docs: list[Synced]) -> None:
        """These documents' points are in the store: one transaction for all of them."""
        now = time.time()
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO queued_documents VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        d.source,
                        d.path,
                        d.queued.entry_id,
                        d.queued.text,
                        json.dumps(d.queued.metadata),
                    )
                    for d in docs
                    if d.queued
                ],
            )
            db.executemany(
                "DELETE FROM chunks WHERE source=? AND path=?", [(d.source, d.path) for d in docs]
            )
            db.executemany(
                "INSERT INTO chunks VALUES (?, ?, ?, ?)",
                [(d.source, d.path, i, h) for d in docs for i, h in enumerate(d.hashes)],
            )
            db.executemany(
                "INSERT OR REPLACE INTO documents VALUES (?, ?, ?, ?, ?, ?, 'done', NULL, 0, ?)",
                [
                    (d.source, d.path, d.size, d.mtime_ns, d.doc_hash, len(d.hashes), now)
                    for d in docs
                ],
            )

    @_translated
    def record_problem(
        self, source: str, path: str, size: int, mtime_ns: int, status: str, reason: str
    ) -> None:
        """A failed or skipped document: it has no points, and says why."""
        with self.transaction() as db:
            db.execute("DELETE FROM chunks WHERE source=? AND path=?", (source, path))
            db.execute(
                """INSERT INTO documents VALUES (?, ?, ?, ?, NULL, 0, ?, ?, 1, ?)
                   ON CONFLICT (source, path) DO UPDATE SET size=excluded.size,
                   mtime_ns=excluded.mtime_ns, doc_hash=NULL, chunk_count=0,
                   status=excluded.status, error=excluded.error,
                   attempts=documents.attempts + 1, synced_at=excluded.synced_at""",
                (source, path, size, mtime_ns, status, reason, time.time()),
            )

    @_translated
    def record_unreadable(self, source: str, path: str, reason: str) -> None:
        """A synced document whose file cannot be read now: failed, its chunks (and size and
        mtime, so the next scan tries again) kept as they were."""
        self.db.execute(
            """UPDATE documents SET status='failed', error=?, attempts=attempts + 1,
               synced_at=? WHERE source=? AND path=?""",
            (reason, time.time(), source, path),
        )

    @_translated
    def touch(self, source: str, path: str, size: int, mtime_ns: int) -> None:
        """Same bytes, new size/mtime record (e.g. a `touch`): nothing to re-read next time."""
        self.db.execute(
            "UPDATE documents SET size=?, mtime_ns=? WHERE source=? AND path=?",
            (size, mtime_ns, source, path),
        )

    @_translated
    def forget(self, source: str, paths: Iterable[str], entry_id: str | None = None) -> None:
        """The documents are gone from the store; a queue delete leaves its entry id."""
        keys = [(source, p) for p in paths]
        with self.transaction() as db:
            if entry_id is not None:
                db.executemany(
                    "INSERT OR REPLACE INTO queued_documents VALUES (?, ?, ?, NULL, NULL)",
                    [(source, p, entry_id) for p in paths],
                )
            db.executemany("DELETE FROM chunks WHERE source=? AND path=?", keys)
            db.executemany("DELETE FROM documents WHERE source=? AND path=?", keys)

    @_translated
    def set_pending(self, source: str, pending: int, synced: bool = False) -> None:
        """How many documents wait to be synced; `synced` also stamps a completed sync."""
        self.db.execute(
            """INSERT INTO sources VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET
               pending=excluded.pending, last_sync=coalesce(excluded.last_sync, sources.last_sync)""",
            (source, time.time() if synced else None, pending),
        )

    @_translated
    def queued(self, source: str, paths: Iterable[str] | None = None) -> dict[str, QueuedText]:
        """path → the last applied entry of each document of a queue source."""
        sql = "SELECT path, entry_id, text, metadata FROM queued_documents WHERE source=?"
        return {
            path: QueuedText(entry, text, json.loads(meta) if meta else {})
            for path, entry, text, meta in self._rows(sql, source, paths)
        }

    def _rows(self, sql: str, source: str, paths: Iterable[str] | None) -> list[tuple]:
        """The rows `sql` selects for a source, all of them or those of these paths."""
        if paths is None:
            return list(self.db.execute(sql, (source,)))
        keys, rows = list(set(paths)), []
        for i in range(0, len(keys), 500):
            part = keys[i : i + 500]
            rows += self.db.execute(
                f"{sql} AND path IN ({','.join('?' * len(part))})", [source, *part]
            )
        return rows

    # -- vectors --------------------------------------------------------------------------

    @_translated
    def vectors(self, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        return self._vectors("vectors", hashes)

    def _vectors(self, table: str, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        import numpy as np

        found: dict[str, np.ndarray] = {}
        keys = list(set(hashes))
        for i in range(0, len(keys), 500):
            part = keys[i : i + 500]
            rows = self.db.execute(
                f"SELECT chunk_hash, vector FROM {table} WHERE chunk_hash IN ({','.join('?' * len(part))})",
                part,
            )
            found.update((h, np.frombuffer(v, dtype=np.float32)) for h, v in rows)
        return found

    @_translated
    def add_vectors(self, vectors: dict[str, np.ndarray]) -> None:
        import numpy as np

        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)",
                [
                    (h, np.asarray(v, dtype=np.float32).tobytes(), time.time())
                    for h, v in vectors.items()
                ],
            )

    @_translated
    def drop_unused_vectors(self, retention_days: float) -> int:
        """Stamp the vectors chunks use now; drop those unused for `retention_days`.

        A stamp is refreshed at most hourly, so a no-op resync rewrites no row.
        """
        now = time.time()
        with self.transaction() as db:
            db.execute(
                """UPDATE vectors SET last_used=? WHERE last_used IS NULL
                   OR (last_used < ? AND chunk_hash IN (SELECT chunk_hash FROM chunks))""",
                (now, now - _STAMP_EVERY_SECONDS),
            )
            cur = db.execute(
                """DELETE FROM vectors WHERE last_used < ?
                   AND chunk_hash NOT IN (SELECT chunk_hash FROM chunks)""",
                (now - retention_days * 86400,),
            )
        return cur.rowcount

    # -- what a scan could not see, and what it would not delete --------------------------

    @_translated
    def set_listing_problems(
        self, source: str, unlisted: dict[str, str], held: list[str], replace: bool
    ) -> None:
        """Record a plan's unlisted directories and held deletions; a full scan replaces
        what the last one found, a plan for a few paths adds to it."""
        with self.transaction() as db:
            if replace:
                db.execute("DELETE FROM unlisted WHERE source=?", (source,))
                db.execute("DELETE FROM held_deletions WHERE source=?", (source,))
            db.executemany(
                "INSERT OR REPLACE INTO unlisted VALUES (?, ?, ?)",
                [(source, p, e) for p, e in unlisted.items()],
            )
            db.executemany(
                "INSERT OR IGNORE INTO held_deletions VALUES (?, ?)", [(source, p) for p in held]
            )

    # -- reporting ------------------------------------------------------------------------

    @_translated
    def status(self, source: str) -> SourceStatus:
        docs, chunks = self.db.execute(
            """SELECT count(*) FILTER (WHERE status='done'), coalesce(sum(chunk_count), 0)
               FROM documents WHERE source=?""",
            (source,),
        ).fetchone()
        skipped = self.db.execute(
            "SELECT count(*) FROM documents WHERE source=? AND status='skipped'", (source,)
        ).fetchone()[0]
        failed = [
            DocRow(*r)
            for r in self.db.execute(
                "SELECT * FROM documents WHERE source=? AND status='failed' ORDER BY path",
                (source,),
            )
        ]
        row = self.db.execute(
            "SELECT pending, last_sync FROM sources WHERE name=?", (source,)
        ).fetchone() or (0, None)
        unlisted = dict(
            self.db.execute(
                "SELECT path, error FROM unlisted WHERE source=? ORDER BY path", (source,)
            )
        )
        held = [
            r[0]
            for r in self.db.execute(
                "SELECT path FROM held_deletions WHERE source=? ORDER BY path", (source,)
            )
        ]
        return SourceStatus(source, docs, chunks, failed, skipped, *row, unlisted, held)
