"""Embedded Qdrant: one Qdrant Edge shard at `{qdrant.path}/{collection}`.

The embedder identity is kept beside Edge's own files in `syncd.json`, so another tool
can still open the shard with `qdrant_edge.EdgeShard.load`.

A shard of the old layout (one unnamed dense vector) is upgraded on open: a new shard is
built beside it at `{collection}.upgrade` from the old one's vectors and payload texts,
then swapped in by two renames. A crash at any step leaves what the next open finishes:
a staging shard with the old one still in place is incomplete and built again; once the
old one has moved to `{collection}.old`, the staging shard is complete and moves in. A new
embedder's shard, built at `{collection}.next` (syncd/switch.py), is promoted the same way.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import qdrant_edge as qe
import structlog

from syncd.errors import StoreError, StoreLocked
from syncd.store import (
    BM25,
    DENSE,
    FACET_LIMIT,
    INTEGER_FIELDS,
    KEYWORD_FIELDS,
    RRF_K,
    RRF_WEIGHTS,
    UPGRADE_BATCH,
    Hit,
    Identity,
    PointData,
    Record,
    SearchQuery,
    StoredPoint,
    dense_size,
    legs,
    match_glob,
    mismatch,
    ranked,
    to_records,
    upgraded,
    where_values,
)

log = structlog.get_logger(__name__)

IDENTITY_FILE = "syncd.json"
# Edge holds what it has not flushed in memory, ~0.7 KB a point: a first sync of a million
# files held 0.7 GB more at its end. Flushing this often costs little and caps that. So
# does optimizing as often: the appendable segment, its payload indexes in memory, stops
# growing. 200,000 points written at once: peak 2,360 MB and 101 s when optimized only at
# the end (which copies the whole segment), 838 MB and 53 s optimized every 50,000.
FLUSH_EVERY_POINTS = 50_000
# Points per update. Edge holds the GIL through a whole update, so the event loop (the
# next embedding request) waits for it: ~10 ms for this many, not 40 for a thousand.
UPDATE_POINTS = 256
# Edge builds no index until asked (`optimize`), and scans every dense vector of its one
# appendable segment in full precision: 22 ms a query at 100,000 points. Asked after each
# pass that wrote, it turns segments past `INDEXING_THRESHOLD_KB` of vectors (about 6,500
# points at 384 dimensions) into int8-quantized ones held in memory (a quarter of the
# bytes) and searches scan those, then rescore `OVERSAMPLING` times the hits wanted with
# the full vectors: 3 ms at 100,000 points, the same top 10 as an exact search (measured).
# No HNSW graph (m=0): building one took 16 CPU s per 20,000 points here, quantizing 0.2.
# With up to 8 segments, a pass quantizes what it added, not the whole shard again.
INDEXING_THRESHOLD_KB = 10_000
OVERSAMPLING = 4.0
_RESCORED = qe.SearchParams(
    quantization=qe.QuantizationSearchParams(rescore=True, oversampling=OVERSAMPLING)
)
# Cold here as in `_config`: the indexes are read through the page cache (see there).
_SCHEMAS = {
    **dict.fromkeys(KEYWORD_FIELDS, qe.KeywordIndexParams(memory=qe.Memory.Cold)),
    **dict.fromkeys(
        INTEGER_FIELDS, qe.IntegerIndexParams(lookup=True, range=True, memory=qe.Memory.Cold)
    ),
}


def _source_is(source: str) -> qe.FieldCondition:
    return qe.FieldCondition("source", match=qe.MatchValue(source))


class EdgeStore:
    def __init__(self, shard: qe.EdgeShard, identity: Identity) -> None:
        self._shard = shard
        self.identity = identity
        self._unflushed = 0
        self._written = False

    @classmethod
    def open(
        cls, path: Path, identity: Identity | None, rebuild: bool, create: bool
    ) -> EdgeStore | None:
        _finish_swap(path)
        if (path / "edge_config.json").exists():
            found = _read_identity(path)
            identity = identity or found
            if found != identity:
                if not rebuild:
                    raise mismatch(found, identity, f"the embedded collection {path}")
                shutil.rmtree(path)
            elif _is_old_layout(path):
                _upgrade(path, identity)
        if not (path / "edge_config.json").exists():
            if not create or identity is None:
                return None
            return cls(_create(path, identity), identity)
        return cls(_call(qe.EdgeShard.load, str(path), _config(identity.dimension)), identity)

    def optimize(self) -> None:
        """Quantize what grew past the indexing threshold; nothing to do costs ~0.1 ms."""
        started = time.monotonic()
        self._written = False
        if _call(self._shard.optimize):
            log.info("store_optimized", seconds=round(time.monotonic() - started, 2))

    def upsert(self, points: list[PointData]) -> None:
        self.upsert_records(to_records(points))

    def upsert_records(self, records: list[Record]) -> None:
        for i in range(0, len(records), UPDATE_POINTS):
            ops = [
                qe.Point(r.id, {DENSE: r.dense, BM25: r.bm25}, r.payload)
                for r in records[i : i + UPDATE_POINTS]
            ]
            _call(self._shard.update, qe.UpdateOperation.upsert_points(ops))
        self._written = True
        self._unflushed += len(records)
        if self._unflushed >= FLUSH_EVERY_POINTS:
            _call(self._shard.flush)
            self._unflushed = 0
            self.optimize()
            # What Edge freed in building segments stays mapped unless glibc is asked.
            from syncd.memory import trim_heap

            trim_heap()

    def scroll(
        self, offset: str | None = None, limit: int = UPGRADE_BATCH
    ) -> tuple[list[Record], str | None]:
        request = qe.ScrollRequest(offset=offset, limit=limit, with_payload=True, with_vector=True)
        records, next_offset = _call(self._shard.scroll, request)
        return [_record(r) for r in records], None if next_offset is None else str(next_offset)

    def retrieve(self, ids: list[str]) -> list[Record]:
        return [_record(r) for r in _call(self._shard.retrieve, ids, True, True)]

    def count_by_source(self) -> dict[str, int]:
        return self._facet("source", None)

    def delete_documents(self, source: str, paths: list[str]) -> None:
        if paths:
            where = qe.Filter(
                must=[_source_is(source), qe.FieldCondition("path", match=qe.MatchAny(paths))]
            )
            _call(self._shard.update, qe.UpdateOperation.delete_points_by_filter(where))

    def trim(self, source: str, paths: list[str], keep: int) -> None:
        where = qe.Filter(
            must=[
                _source_is(source),
                qe.FieldCondition("path", match=qe.MatchAny(paths)),
                qe.FieldCondition("chunk_index", range=qe.RangeFloat(gte=keep)),
            ]
        )
        _call(self._shard.update, qe.UpdateOperation.delete_points_by_filter(where))

    def count(self, source: str) -> int:
        request = qe.CountRequest(exact=True, filter=qe.Filter(must=[_source_is(source)]))
        return _call(self._shard.count, request)

    def _facet(self, key: str, where: qe.Filter | None) -> dict[str, int]:
        request = qe.FacetRequest(key=key, limit=FACET_LIMIT, exact=True, filter=where)
        return {str(h.value): h.count for h in _call(self._shard.facet, request).hits}

    def _paths(self, where: qe.Filter | None) -> dict[str, int]:
        return self._facet("path", where)

    def chunk_counts(self, source: str) -> dict[str, int]:
        return self._paths(qe.Filter(must=[_source_is(source)]))

    def search(self, query: SearchQuery) -> list[Hit]:
        where = _filter(query)
        if query.path_glob:
            paths = match_glob(self._paths(where), query.path_glob)
            if not paths:
                return []
            where = _filter(query, paths)
        fused = legs(query)
        nearest = [qe.Query.Nearest(vector, using=using) for using, vector in fused]
        if not nearest:
            return []
        if len(nearest) == 1:
            request = qe.QueryRequest(
                limit=query.limit,
                query=nearest[0],
                filter=where,
                params=_RESCORED,
                with_payload=True,
            )
        else:
            request = qe.QueryRequest(
                limit=query.limit,
                prefetches=[
                    qe.Prefetch(query.candidates, q, filter=where, params=_RESCORED)
                    for q in nearest
                ],
                query=qe.Fusion.Rrf(k=RRF_K, weights=[RRF_WEIGHTS[u] for u, _ in fused]),
                filter=where,
                with_payload=True,
            )
        return ranked(_call(self._shard.query, request))

    def document(self, source: str, path: str) -> list[dict[str, Any]]:
        where = qe.Filter(
            must=[_source_is(source), qe.FieldCondition("path", match=qe.MatchValue(path))]
        )
        payloads = [r.payload or {} for r in _scroll(self._shard, where, with_vector=False)]
        return sorted(payloads, key=lambda p: p.get("chunk_index", 0))

    def points(self, source: str) -> Iterator[StoredPoint]:
        offset = None
        while True:
            page, offset = self.points_page(source, offset)
            yield from page
            if offset is None:
                return

    def points_page(self, source: str, offset: str | None) -> tuple[list[StoredPoint], str | None]:
        request = qe.ScrollRequest(
            offset=offset,
            limit=UPGRADE_BATCH,
            filter=qe.Filter(must=[_source_is(source)]),
            with_payload=True,
            with_vector=[DENSE],
        )
        records, next_offset = _call(self._shard.scroll, request)
        page = [StoredPoint(str(r.id), r.payload or {}, dense_size(r.vector)) for r in records]
        return page, None if next_offset is None else str(next_offset)

    def delete_points(self, ids: list[str]) -> None:
        if ids:
            _call(self._shard.update, qe.UpdateOperation.delete_points(ids))

    def close(self) -> None:
        """Leaves what this store wrote indexed (a migrate, a switch, a one-shot command)."""
        if self._written:
            self.optimize()
        _call(self._shard.flush)
        self._shard.close()


def _filter(query: SearchQuery, paths: list[str] | None = None) -> qe.Filter | None:
    must: list[Any] = []
    if query.source:
        must.append(_source_is(query.source))
    if paths is not None:
        must.append(qe.FieldCondition("path", match=qe.MatchAny(paths)))
    for key, value in query.where.items():
        alternatives = [
            qe.FieldCondition(f"metadata.{key}", match=qe.MatchValue(v))
            for v in where_values(value)
        ]
        must.append(qe.Filter(should=alternatives))
    return qe.Filter(must=must) if must else None


def _record(r: Any) -> Record:
    return Record(str(r.id), r.vector[DENSE], r.vector[BM25], r.payload or {})


def _scroll(shard: qe.EdgeShard, where: qe.Filter | None, with_vector: bool | list[str]):
    offset = None
    while True:
        request = qe.ScrollRequest(
            offset=offset,
            limit=UPGRADE_BATCH,
            filter=where,
            with_payload=True,
            with_vector=with_vector,
        )
        records, offset = _call(shard.scroll, request)
        yield from records
        if offset is None:
            return


def _config(dimension: int) -> qe.EdgeConfig:
    """Given at every load too, so a shard made by an older syncd gets quantized as well."""
    # Cold: vectors are read through the page cache as searches touch them. Cached (the
    # default) reads the whole preallocated 32 MB chunk into memory at every load, unused
    # part included; searches take the same time either way (measured, 3,000 points).
    # The same for the BM25 index, payloads, ids and payload indexes: Edge alone, writing a
    # million points as a first sync does, peaked at 1,617 MB with them in memory, at
    # 1,014 MB cold and with the heap trimmed at each flush (anon 963 → 260 MB at its end).
    cold = qe.Memory.Cold
    dense = qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine, memory=cold)
    return qe.EdgeConfig(
        vectors={DENSE: dense},
        sparse_vectors={BM25: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf, memory=cold)},
        payload_memory=cold,
        id_tracker_memory=cold,
        hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000),
        quantization_config=qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, always_ram=True),
        optimizers=qe.EdgeOptimizersConfig(
            default_segment_number=8, indexing_threshold=INDEXING_THRESHOLD_KB
        ),
    )


def _create(path: Path, identity: Identity) -> qe.EdgeShard:
    """Built beside `path` and renamed into place: a kill -9 while creating must not leave a
    shard without its identity file, which every later start would refuse."""
    building = path.with_name(path.name + ".new")
    shutil.rmtree(building, ignore_errors=True)
    shard = _call(qe.EdgeShard.create, str(building), _config(identity.dimension))
    for field, schema in _SCHEMAS.items():
        _call(shard.update, qe.UpdateOperation.create_field_index(field, schema))
    _call(shard.flush)
    shard.close()
    (building / IDENTITY_FILE).write_text(
        json.dumps({"model": identity.model, "dimension": identity.dimension})
    )
    building.rename(path)
    return _call(qe.EdgeShard.load, str(path), _config(identity.dimension))


def _staging(path: Path) -> Path:
    return path.with_name(path.name + ".upgrade")


def _next(path: Path) -> Path:
    """Where `syncd.store.next_index` builds a new embedder's shard."""
    return path.with_name(path.name + ".next")


def _retired(path: Path) -> Path:
    return path.with_name(path.name + ".old")


def _upgrade(path: Path, identity: Identity) -> None:
    """Copy every point into the two-vector layout, BM25 from its text; nothing embedded."""
    staging = _staging(path)
    shutil.rmtree(staging, ignore_errors=True)
    old = _call(qe.EdgeShard.load, str(path))
    total = _call(old.count, qe.CountRequest(exact=True))
    log.info("store_upgrade_started", path=str(path), points=total, adds=BM25)
    new = EdgeStore(_create(staging, identity), identity)
    points = ((str(r.id), r.vector, r.payload or {}) for r in _scroll(old, None, with_vector=True))
    for records in upgraded(points):
        new.upsert_records(records)
    new.close()
    old.close()
    path.rename(_retired(path))
    _finish_swap(path)
    log.info("store_upgrade_finished", path=str(path), points=total)


def promote_shard(path: Path, built: Path) -> None:
    """The complete shard at `built` takes the place of the one at `path` (both closed)."""
    if built.exists():
        if path.exists():
            path.rename(_retired(path))
        built.rename(path)
    _finish_swap(path)
    log.info("store_promoted", path=str(path), built=str(built))


def drop_shard(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _finish_swap(path: Path) -> None:
    """Complete an upgrade or a promotion a crash interrupted between or after the two
    renames: the old shard is moved aside only once the new one is complete."""
    retired = _retired(path)
    if not retired.exists():
        return
    if not path.exists():
        built = [p for p in (_staging(path), _next(path)) if p.exists()]
        (built[0] if built else retired).rename(path)
    shutil.rmtree(retired, ignore_errors=True)


def _is_old_layout(path: Path) -> bool:
    return DENSE not in json.loads((path / "edge_config.json").read_text()).get("vectors", {})


def _read_identity(path: Path) -> Identity:
    vectors = json.loads((path / "edge_config.json").read_text()).get("vectors", {})
    params = vectors.get(DENSE) or vectors.get("")
    dimension = params["size"] if params else -1
    try:
        recorded = json.loads((path / IDENTITY_FILE).read_text())
    except (OSError, ValueError):
        return Identity("an unknown embedder", dimension)
    return Identity(recorded.get("model", "an unknown embedder"), dimension)


def _call(fn, *args):
    """Qdrant Edge raises bare Exceptions; a held lock means another process has the shard."""
    try:
        return fn(*args)
    except Exception as e:
        text = str(e)
        if "WouldBlock" in text or "lock" in text.lower():
            raise StoreLocked(
                "the embedded Qdrant store is in use by another syncd process "
                "(embedded mode allows one process; stop it or use a Qdrant server)"
            ) from e
        raise StoreError(f"Qdrant Edge: {text}") from e
