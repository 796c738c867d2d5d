"""A Qdrant server or cluster through qdrant-client (`qdrant.url`, `qdrant.api_key`).

The embedder identity is kept in the collection's metadata.

A collection of the old layout (one unnamed dense vector) is upgraded on connect: its
points are copied into `{collection}-bm25` with BM25 computed from their texts, then the
old collection is dropped and `{collection}` becomes an alias of the new one. Should a
crash fall between the drop and the alias, the next connect finds the new collection
without its name and adds the alias. A new embedder's collection (syncd/switch.py) is
promoted by the same alias.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import qdrant_edge as qe
import structlog
from qdrant_client import QdrantClient
from qdrant_client import models as m
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from syncd.config import QdrantConfig
from syncd.errors import BackendUnavailable, StoreError, SyncdError
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

_SCHEMAS = {
    **dict.fromkeys(KEYWORD_FIELDS, m.PayloadSchemaType.KEYWORD),
    **dict.fromkeys(INTEGER_FIELDS, m.PayloadSchemaType.INTEGER),
}


def _structs(records: list[Record]) -> list[m.PointStruct]:
    return [
        m.PointStruct(id=r.id, vector={DENSE: r.dense, BM25: _sparse(r.bm25)}, payload=r.payload)
        for r in records
    ]


def _sparse(vector: qe.SparseVector) -> m.SparseVector:
    return m.SparseVector(indices=vector.indices, values=vector.values)


def _record(r: m.Record) -> Record:
    sparse = r.vector[BM25]
    return Record(
        str(r.id), r.vector[DENSE], qe.SparseVector(sparse.indices, sparse.values), r.payload or {}
    )


def _source_is(source: str) -> m.FieldCondition:
    return m.FieldCondition(key="source", match=m.MatchValue(value=source))


class ServerStore:
    def __init__(self, client: QdrantClient, collection: str) -> None:
        self._client = client
        self._collection = collection
        self.identity = Identity("an unknown embedder", -1)

    @classmethod
    def connect(
        cls, config: QdrantConfig, identity: Identity | None, rebuild: bool, create: bool
    ) -> ServerStore | None:
        client = _client(config)
        store = cls(client, config.collection)
        if store.ensure(identity, rebuild, create):
            return store
        client.close()
        return None

    def ensure(self, identity: Identity | None, rebuild: bool, create: bool = True) -> bool:
        """Check or create the collection; false when it is missing and not to be created.

        With `identity` None an existing collection is taken as it was built.
        """
        with _translated():
            staging = f"{self._collection}-bm25"
            if not self._client.collection_exists(self._collection) and (
                self._client.collection_exists(staging)
            ):
                self._alias(staging)
            if self._client.collection_exists(self._collection):
                info = self._client.get_collection(self._collection).config
                meta = info.metadata or {}
                params = info.params.vectors
                old_layout = isinstance(params, m.VectorParams)
                dense = params if old_layout else (params or {}).get(DENSE)
                found = Identity(
                    meta.get("syncd_model", "an unknown embedder"), dense.size if dense else -1
                )
                identity = self.identity = identity or found
                if found == identity:
                    if old_layout:
                        self._upgrade(staging, identity)
                    return True
                if not rebuild:
                    raise mismatch(found, identity, f"the Qdrant collection {self._collection!r}")
                self._drop()
            elif not create or identity is None:
                return False
            self._create(self._collection, identity)
            self.identity = identity
        return True

    def _create(self, name: str, identity: Identity) -> None:
        self._client.create_collection(
            name,
            vectors_config={
                DENSE: m.VectorParams(size=identity.dimension, distance=m.Distance.COSINE)
            },
            sparse_vectors_config={BM25: m.SparseVectorParams(modifier=m.Modifier.IDF)},
            metadata={"syncd_model": identity.model},
        )
        for field, schema in _SCHEMAS.items():
            self._client.create_payload_index(name, field, schema)

    def _alias(self, target: str) -> None:
        self._client.update_collection_aliases(
            [
                m.CreateAliasOperation(
                    create_alias=m.CreateAlias(collection_name=target, alias_name=self._collection)
                )
            ]
        )

    def _drop(self) -> None:
        """Delete the collection, or the one its name is an alias of, and the alias."""
        aliases = {a.alias_name: a.collection_name for a in self._client.get_aliases().aliases}
        target = aliases.get(self._collection)
        if target is None:
            self._client.delete_collection(self._collection)
            return
        self._client.update_collection_aliases(
            [m.DeleteAliasOperation(delete_alias=m.DeleteAlias(alias_name=self._collection))]
        )
        self._client.delete_collection(target)

    def _upgrade(self, staging: str, identity: Identity) -> None:
        """Copy every point into the two-vector layout, BM25 from its text; nothing embedded."""
        total = self._client.count(self._collection, exact=True).count
        log.info("store_upgrade_started", collection=self._collection, points=total, adds=BM25)
        if self._client.collection_exists(staging):
            self._client.delete_collection(staging)
        self._create(staging, identity)
        points = ((r.id, r.vector, r.payload or {}) for r in self._scroll(None, with_vectors=True))
        for records in upgraded(points):
            self._client.upsert(staging, _structs(records), wait=True)
        self._client.delete_collection(self._collection)
        self._alias(staging)
        log.info("store_upgrade_finished", collection=self._collection, points=total)

    def upsert(self, points: list[PointData]) -> None:
        self.upsert_records(to_records(points))

    def upsert_records(self, records: list[Record]) -> None:
        with _translated():
            self._client.upsert(self._collection, _structs(records), wait=True)

    def scroll(
        self, offset: str | None = None, limit: int = UPGRADE_BATCH
    ) -> tuple[list[Record], str | None]:
        with _translated():
            records, next_offset = self._client.scroll(
                self._collection, limit=limit, offset=offset, with_payload=True, with_vectors=True
            )
        return [_record(r) for r in records], None if next_offset is None else str(next_offset)

    def retrieve(self, ids: list[str]) -> list[Record]:
        with _translated():
            records = self._client.retrieve(
                self._collection, ids, with_payload=True, with_vectors=True
            )
        return [_record(r) for r in records]

    def count_by_source(self) -> dict[str, int]:
        return self._facet("source", None)

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

    def trim(self, source: str, paths: list[str], keep: int) -> None:
        self._delete(
            _source_is(source),
            m.FieldCondition(key="path", match=m.MatchAny(any=paths)),
            m.FieldCondition(key="chunk_index", range=m.Range(gte=keep)),
        )

    def count(self, source: str) -> int:
        with _translated():
            result = self._client.count(
                self._collection, count_filter=m.Filter(must=[_source_is(source)]), exact=True
            )
        return result.count

    def _facet(self, key: str, where: m.Filter | None) -> dict[str, int]:
        with _translated():
            result = self._client.facet(
                self._collection, key=key, limit=FACET_LIMIT, exact=True, facet_filter=where
            )
        return {str(h.value): h.count for h in result.hits}

    def _paths(self, where: m.Filter | None) -> dict[str, int]:
        return self._facet("path", where)

    def chunk_counts(self, source: str) -> dict[str, int]:
        return self._paths(m.Filter(must=[_source_is(source)]))

    def search(self, query: SearchQuery) -> list[Hit]:
        where = _filter(query)
        if query.path_glob:
            paths = match_glob(self._paths(where), query.path_glob)
            if not paths:
                return []
            where = _filter(query, paths)
        nearest = [
            (using, _sparse(vector) if using == BM25 else vector) for using, vector in legs(query)
        ]
        if not nearest:
            return []
        if len(nearest) == 1:
            using, vector = nearest[0]
            arguments: dict[str, Any] = {"query": vector, "using": using}
        else:
            arguments = {
                "prefetch": [
                    m.Prefetch(query=vector, using=using, limit=query.candidates, filter=where)
                    for using, vector in nearest
                ],
                "query": m.RrfQuery(
                    rrf=m.Rrf(k=RRF_K, weights=[RRF_WEIGHTS[u] for u, _ in nearest])
                ),
            }
        with _translated():
            result = self._client.query_points(
                self._collection,
                limit=query.limit,
                with_payload=True,
                query_filter=where,
                **arguments,
            )
        return ranked(result.points)

    def document(self, source: str, path: str) -> list[dict[str, Any]]:
        where = m.Filter(
            must=[_source_is(source), m.FieldCondition(key="path", match=m.MatchValue(value=path))]
        )
        payloads = [r.payload or {} for r in self._scroll(where, with_vectors=False)]
        return sorted(payloads, key=lambda p: p.get("chunk_index", 0))

    def points(self, source: str) -> Iterator[StoredPoint]:
        where = m.Filter(must=[_source_is(source)])
        for r in self._scroll(where, with_vectors=[DENSE]):
            yield StoredPoint(str(r.id), r.payload or {}, dense_size(r.vector))

    def delete_points(self, ids: list[str]) -> None:
        if ids:
            with _translated():
                self._client.delete(self._collection, m.PointIdsList(points=ids), wait=True)

    def _scroll(self, where: m.Filter | None, with_vectors: bool | list[str]) -> Iterator[m.Record]:
        offset = None
        while True:
            with _translated():
                records, offset = self._client.scroll(
                    self._collection,
                    scroll_filter=where,
                    limit=UPGRADE_BATCH,
                    offset=offset,
                    with_vectors=with_vectors,
                )
            yield from records
            if offset is None:
                return

    def optimize(self) -> None:
        """Nothing: the server's optimizers index in the background."""

    def close(self) -> None:
        self._client.close()


def _filter(query: SearchQuery, paths: list[str] | None = None) -> m.Filter | None:
    must: list[Any] = []
    if query.source:
        must.append(_source_is(query.source))
    if paths is not None:
        must.append(m.FieldCondition(key="path", match=m.MatchAny(any=paths)))
    for key, value in query.where.items():
        alternatives = [
            m.FieldCondition(key=f"metadata.{key}", match=m.MatchValue(value=v))
            for v in where_values(value)
        ]
        must.append(m.Filter(should=alternatives))
    return m.Filter(must=must) if must else None


def _client(config: QdrantConfig) -> QdrantClient:
    key = config.api_key.get_secret_value() if config.api_key else None
    if config.url == ":memory:":
        return QdrantClient(location=config.url, api_key=key)
    return QdrantClient(url=config.url, api_key=key)


def promote_collection(config: QdrantConfig, built: str) -> None:
    """The alias `{collection}` names `built` from now on, in one alias update, and the
    collection it named before is deleted. A collection (not an alias) of that name must
    first be deleted: syncd itself searches the built collection by its own name meanwhile,
    and a crash in between is finished by running this again."""
    client = _client(config)
    try:
        with _translated():
            aliases = {a.alias_name: a.collection_name for a in client.get_aliases().aliases}
            old = aliases.get(config.collection)
            if old == built:
                return
            actions: list[Any] = []
            if old is not None:
                actions.append(
                    m.DeleteAliasOperation(delete_alias=m.DeleteAlias(alias_name=config.collection))
                )
            elif client.collection_exists(config.collection):
                client.delete_collection(config.collection)
            actions.append(
                m.CreateAliasOperation(
                    create_alias=m.CreateAlias(collection_name=built, alias_name=config.collection)
                )
            )
            client.update_collection_aliases(actions)
            if old is not None:
                client.delete_collection(old)
        log.info("store_promoted", collection=config.collection, built=built, old=old)
    finally:
        client.close()


def drop_collection(config: QdrantConfig) -> None:
    client = _client(config)
    try:
        with _translated():
            if client.collection_exists(config.collection):
                client.delete_collection(config.collection)
    finally:
        client.close()


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
