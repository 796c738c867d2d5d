"""A Qdrant server or cluster through qdrant-client (`qdrant.url`, `qdrant.api_key`).

The embedder identity is kept in the collection's metadata.
"""

from __future__ import annotations

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as m
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from syncd.config import Qdrant as QdrantConfig
from syncd.errors import BackendUnavailable, StoreError, SyncdError
from syncd.store import INDEXED_FIELDS, Hit, Identity, PointData, mismatch

_FACET_LIMIT = 2**31 - 1


def _source_is(source: str) -> m.FieldCondition:
    return m.FieldCondition(key="source", match=m.MatchValue(value=source))


class ServerStore:
    def __init__(self, client: QdrantClient, collection: str) -> None:
        self._client = client
        self._collection = collection

    @classmethod
    def connect(
        cls, config: QdrantConfig, identity: Identity, rebuild: bool, create: bool
    ) -> ServerStore | None:
        key = config.api_key.get_secret_value() if config.api_key else None
        client = (
            QdrantClient(location=config.url, api_key=key)
            if config.url == ":memory:"
            else QdrantClient(url=config.url, api_key=key)
        )
        store = cls(client, config.collection)
        return store if store.ensure(identity, rebuild, create) else None

    def ensure(self, identity: Identity, rebuild: bool, create: bool = True) -> bool:
        """Check or create the collection; false when it is missing and not to be created."""
        with _translated():
            if self._client.collection_exists(self._collection):
                info = self._client.get_collection(self._collection).config
                meta = info.metadata or {}
                params = info.params.vectors
                size = params.size if isinstance(params, m.VectorParams) else -1
                found = Identity(meta.get("syncd_model", "an unknown embedder"), size)
                if found == identity:
                    return True
                if not rebuild:
                    raise mismatch(found, identity, f"the Qdrant collection {self._collection!r}")
                self._client.delete_collection(self._collection)
            elif not create:
                return False
            self._client.create_collection(
                self._collection,
                vectors_config=m.VectorParams(size=identity.dimension, distance=m.Distance.COSINE),
                metadata={"syncd_model": identity.model},
            )
            for field in INDEXED_FIELDS:
                self._client.create_payload_index(
                    self._collection, field, m.PayloadSchemaType.KEYWORD
                )
        return True

    def upsert(self, points: list[PointData]) -> None:
        structs = [
            m.PointStruct(id=p.id, vector=p.vector.tolist(), payload=p.payload) for p in points
        ]
        with _translated():
            self._client.upsert(self._collection, structs, wait=True)

    def _delete(self, *conditions: m.FieldCondition) -> None:
        with _translated():
            self._client.delete(
                self._collection,
                m.FilterSelector(filter=m.Filter(must=list(conditions))),
                wait=True,
            )

    def delete_documents(self, source: str, paths: list[str]) -> None:
        if paths:
            self._delete(
                _source_is(source), m.FieldCondition(key="path", match=m.MatchAny(any=paths))
            )

    def trim(self, source: str, path: str, keep: int) -> None:
        self._delete(
            _source_is(source),
            m.FieldCondition(key="path", match=m.MatchValue(value=path)),
            m.FieldCondition(key="chunk_index", range=m.Range(gte=keep)),
        )

    def count(self, source: str) -> int:
        with _translated():
            result = self._client.count(
                self._collection, count_filter=m.Filter(must=[_source_is(source)]), exact=True
            )
        return result.count

    def chunk_counts(self, source: str) -> dict[str, int]:
        with _translated():
            result = self._client.facet(
                self._collection,
                key="path",
                limit=_FACET_LIMIT,
                exact=True,
                facet_filter=m.Filter(must=[_source_is(source)]),
            )
        return {str(h.value): h.count for h in result.hits}

    def search(self, vector: np.ndarray, limit: int, source: str | None) -> list[Hit]:
        with _translated():
            result = self._client.query_points(
                self._collection,
                query=vector.tolist(),
                limit=limit,
                with_payload=True,
                query_filter=m.Filter(must=[_source_is(source)]) if source else None,
            )
        return [Hit(p.score, p.payload or {}) for p in result.points]

    def close(self) -> None:
        self._client.close()


class _translated:
    """qdrant-client's exceptions → syncd's: unreachable or refused is a backend outage."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, tb) -> bool:
        if error is None or isinstance(error, SyncdError) or not isinstance(error, Exception):
            return False
        if isinstance(error, UnexpectedResponse):
            if error.status_code in (401, 403):
                raise BackendUnavailable(
                    f"Qdrant refused the credentials (HTTP {error.status_code}); check qdrant.api_key"
                ) from error
            if error.status_code >= 500:
                raise BackendUnavailable(f"Qdrant answered HTTP {error.status_code}") from error
            raise StoreError(f"Qdrant: HTTP {error.status_code}: {error.content!r}") from error
        if isinstance(error, (ResponseHandlingException, ConnectionError, OSError)):
            raise BackendUnavailable(f"Qdrant is unreachable: {error}") from error
        raise StoreError(f"Qdrant: {error}") from error
