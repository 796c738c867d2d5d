"""Embedded Qdrant: one Qdrant Edge shard at `{qdrant.path}/{collection}`.

The embedder identity is kept beside Edge's own files in `syncd.json`, so another tool
can still open the shard with `qdrant_edge.EdgeShard.load`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import qdrant_edge as qe

from syncd.errors import StoreError, StoreLocked
from syncd.store import INDEXED_FIELDS, Hit, Identity, PointData, mismatch

IDENTITY_FILE = "syncd.json"
_FACET_LIMIT = 2**31 - 1


def _source_is(source: str) -> qe.FieldCondition:
    return qe.FieldCondition("source", match=qe.MatchValue(source))


class EdgeStore:
    def __init__(self, shard: qe.EdgeShard) -> None:
        self._shard = shard

    @classmethod
    def open(cls, path: Path, identity: Identity, rebuild: bool, create: bool) -> EdgeStore | None:
        marker = path / IDENTITY_FILE
        if (path / "edge_config.json").exists():
            found = _read_identity(path)
            if found != identity:
                if not rebuild:
                    raise mismatch(found, identity, f"the embedded collection {path}")
                shutil.rmtree(path)
        if not (path / "edge_config.json").exists():
            if not create:
                return None
            config = qe.EdgeConfig(
                vectors=qe.EdgeVectorParams(size=identity.dimension, distance=qe.Distance.Cosine)
            )
            shard = _call(qe.EdgeShard.create, str(path), config)
            for field in INDEXED_FIELDS:
                _call(
                    shard.update,
                    qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Keyword),
                )
            _call(shard.flush)
            marker.write_text(
                json.dumps({"model": identity.model, "dimension": identity.dimension})
            )
            return cls(shard)
        return cls(_call(qe.EdgeShard.load, str(path)))

    def upsert(self, points: list[PointData]) -> None:
        ops = [qe.Point(p.id, p.vector.tolist(), p.payload) for p in points]
        _call(self._shard.update, qe.UpdateOperation.upsert_points(ops))

    def delete_documents(self, source: str, paths: list[str]) -> None:
        if paths:
            where = qe.Filter(
                must=[_source_is(source), qe.FieldCondition("path", match=qe.MatchAny(paths))]
            )
            _call(self._shard.update, qe.UpdateOperation.delete_points_by_filter(where))

    def trim(self, source: str, path: str, keep: int) -> None:
        where = qe.Filter(
            must=[
                _source_is(source),
                qe.FieldCondition("path", match=qe.MatchValue(path)),
                qe.FieldCondition("chunk_index", range=qe.RangeFloat(gte=keep)),
            ]
        )
        _call(self._shard.update, qe.UpdateOperation.delete_points_by_filter(where))

    def count(self, source: str) -> int:
        request = qe.CountRequest(exact=True, filter=qe.Filter(must=[_source_is(source)]))
        return _call(self._shard.count, request)

    def chunk_counts(self, source: str) -> dict[str, int]:
        request = qe.FacetRequest(
            key="path", limit=_FACET_LIMIT, exact=True, filter=qe.Filter(must=[_source_is(source)])
        )
        return {str(h.value): h.count for h in _call(self._shard.facet, request).hits}

    def search(self, vector: np.ndarray, limit: int, source: str | None) -> list[Hit]:
        request = qe.QueryRequest(
            limit=limit,
            query=qe.Query.Nearest(vector.tolist()),
            with_payload=True,
            filter=qe.Filter(must=[_source_is(source)]) if source else None,
        )
        return [Hit(p.score, p.payload or {}) for p in _call(self._shard.query, request)]

    def close(self) -> None:
        _call(self._shard.flush)
        self._shard.close()


def _read_identity(path: Path) -> Identity:
    config = json.loads((path / "edge_config.json").read_text())
    dimension = config["vectors"][""]["size"] if "" in config.get("vectors", {}) else -1
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
