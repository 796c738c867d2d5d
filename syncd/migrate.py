"""`syncd migrate`: copy a collection between the embedded store and a Qdrant server.

Nothing is embedded: every point moves with its id, payload and both vectors as stored.
Points are read a page at a time in id order while a few pages upload at once. The
offset of the first point not yet known to be written is kept in SQLite after each
page whose predecessors are all written, so a copy stopped at any moment (kill -9 of
syncd or an outage of the server) resumes there; a page written twice is harmless,
since an upsert under the same id replaces the point.

The target collection is created by the store's own code, with the source's embedder
identity, so both sides have the same layout (named `dense` + sparse `bm25` with IDF,
payload indexes). Once copied, the counts per source are compared and a sample of
points (the first in id order: ids are hashes, so a fair sample) is read back and
compared vector by vector.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import structlog
from tenacity import (
    retry,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from syncd.config import QdrantConfig, Settings
from syncd.errors import BackendUnavailable, ConfigError, SyncdError
from syncd.state import CopyProgress, State
from syncd.store import Record, Store, open_store, same_payload

log = structlog.get_logger(__name__)

#: Points a request carries: ~1.6 MB of JSON at 384 dims, well under Qdrant's 32 MB limit.
PAGE = 256
#: Uploads in flight to a server; the embedded store takes one writer.
PARALLEL = 4
#: Points read back from the target and compared with the source.
SAMPLE = 100
_PROGRESS_EVERY_SECONDS = 5.0

Direction = Literal["to", "from"]

# An outage mid-copy is waited out; one that lasts (or refused credentials) ends the run,
# which resumes where it stopped when run again.
_patient = retry(
    retry=retry_if_exception_type(BackendUnavailable),
    stop=stop_after_attempt(6),
    wait=wait_exponential_jitter(multiplier=0.5, max=15),
    reraise=True,
)


@dataclass
class MigrateReport:
    direction: Direction
    url: str
    collection: str
    #: Points written by this run, and by earlier runs it resumed.
    copied: int = 0
    resumed_from: int = 0
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    sampled: int = 0

    @property
    def points_per_second(self) -> float:
        return self.copied / self.seconds if self.seconds else 0.0


def migrate(
    settings: Settings,
    direction: Direction,
    url: str,
    collection: str | None = None,
    api_key: str | None = None,
    page: int = PAGE,
    parallel: int = PARALLEL,
) -> MigrateReport:
    """Copy `qdrant.path`'s collection to `url` (direction "to") or back ("from")."""
    if settings.qdrant.path is None:
        raise ConfigError("qdrant.path: migrate needs the embedded store's directory")
    if page < 1 or parallel < 1:
        raise ConfigError("--batch-size and --parallel must be at least 1")
    server = QdrantConfig(
        path=None,
        url=url,
        api_key=api_key,
        collection=collection or settings.qdrant.collection,
    )
    embedded = QdrantConfig(path=settings.qdrant.path, collection=settings.qdrant.collection)
    source_config, target_config = (embedded, server) if direction == "to" else (server, embedded)
    report = MigrateReport(direction, url, server.collection)
    key = f"{direction} {url} {server.collection}"
    state = State(settings.state.path)
    source = target = None
    try:
        source = open_store(source_config, None, create=False)
        if source is None:
            raise ConfigError(
                f"nothing to migrate: there is no collection at {_where(source_config)}"
            )
        target = open_store(target_config, source.identity)
        progress = state.copy_progress(key)
        if progress is None:
            held = sum(target.count_by_source().values())
            if held:
                raise ConfigError(
                    f"the target collection at {_where(target_config)} already holds {held} "
                    "points; migrate copies into an empty collection",
                    hint="choose another --collection, or delete that one first",
                )
            progress = CopyProgress(None, 0)
            state.save_copy_progress(key, progress)
        elif progress.next_offset is None:
            # a copy that reached the end but did not verify: write it all again
            progress = CopyProgress(None, 0)
        else:
            log.info("migrate_resumed", target=key, copied=progress.copied)
        report.resumed_from = progress.copied
        started = time.monotonic()
        total = _copy(
            source,
            target,
            progress,
            page,
            1 if direction == "from" else parallel,
            lambda p: state.save_copy_progress(key, p),
        )
        report.seconds = time.monotonic() - started
        report.copied = total - progress.copied
        report.counts, report.sampled = verify(source, target)
        state.finish_copy(key)
    finally:
        for store in (source, target):
            if store is not None:
                store.close()
        state.close()
    log.info(
        "migrate_finished",
        direction=direction,
        collection=report.collection,
        copied=report.copied,
        points_per_second=round(report.points_per_second),
    )
    return report


def _copy(
    source: Store,
    target: Store,
    start: CopyProgress,
    page: int,
    parallel: int,
    save: Callable[[CopyProgress], None],
) -> int:
    """Every page from `start` on; returns the points copied in all runs."""
    total = sum(source.count_by_source().values())
    copied, offset = start.copied, start.next_offset
    in_flight: deque[tuple[Future[None], int, str | None]] = deque()
    last_log = time.monotonic()

    def settle_oldest() -> None:
        nonlocal copied, last_log
        upload, n, next_offset = in_flight.popleft()
        upload.result()
        copied += n
        save(CopyProgress(next_offset, copied))
        if time.monotonic() - last_log >= _PROGRESS_EVERY_SECONDS:
            last_log = time.monotonic()
            log.info("migrate_progress", copied=copied, total=total)

    with ThreadPoolExecutor(parallel, thread_name_prefix="migrate") as pool:
        while True:
            records, offset = _patient(source.scroll)(offset, page)
            if records:
                in_flight.append(
                    (pool.submit(_patient(target.upsert_records), records), len(records), offset)
                )
            if len(in_flight) >= parallel:
                settle_oldest()
            if offset is None:
                break
        while in_flight:
            settle_oldest()
    return copied


def verify(source: Store, target: Store, sample: int = SAMPLE) -> tuple[dict[str, int], int]:
    """Counts per source equal, and a sample of points equal; (counts, points compared)."""
    counts, copied = source.count_by_source(), target.count_by_source()
    if copied != counts:
        raise SyncdError(
            f"after the copy the points per source differ: source {counts}, target {copied}",
            hint="run the same migrate again; it writes the missing points",
        )
    records, _ = source.scroll(None, sample)
    copies = {r.id: r for r in target.retrieve([r.id for r in records])}
    for r in records:
        copy = copies.get(r.id)
        problem = "is missing" if copy is None else _difference(r, copy)
        if problem:
            raise SyncdError(f"point {r.id} of the copy {problem}")
    return counts, len(records)


def _difference(a: Record, b: Record) -> str | None:
    if not same_payload(a.payload, b.payload):
        return f"has another payload: {a.payload!r:.300} != {b.payload!r:.300}"
    if not np.allclose(a.dense, b.dense, atol=1e-6):
        return f"has another dense vector (largest difference {np.abs(np.subtract(a.dense, b.dense)).max():g})"
    if list(a.bm25.indices) != list(b.bm25.indices) or not np.allclose(
        a.bm25.values, b.bm25.values, atol=1e-6
    ):
        return "has another bm25 vector"
    return None


def _where(config: QdrantConfig) -> str:
    return (
        f"{config.url} ({config.collection})"
        if config.url
        else str(config.path / config.collection)
    )


def config_change(settings: Settings, report: MigrateReport, with_key: bool) -> str:
    """What to write in the config to use the copy."""
    if report.direction == "to":
        lines = [
            "To use the server, set in the qdrant section of the config:",
            "  qdrant:",
            f"    url: {report.url}",
            f"    collection: {report.collection}",
        ]
        if with_key:
            lines.append("    api_key: ...   # or SYNCD_QDRANT__API_KEY")
        lines.append(
            f"and remove `path` (the embedded store stays at {settings.qdrant.path} until you delete it)."
        )
    else:
        lines = [
            "To use the embedded copy, set in the qdrant section of the config:",
            "  qdrant:",
            f"    path: {settings.qdrant.path}",
            f"    collection: {settings.qdrant.collection}",
            "and remove `url` and `api_key`.",
        ]
    return "\n".join(lines)
