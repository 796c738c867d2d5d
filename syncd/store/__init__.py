"""Qdrant behind one small interface: embedded (Qdrant Edge) or a server (qdrant-client).

Both hold the same points: one per chunk, a deterministic id, the payload of CONTRACT.md,
and two named vectors: `dense` (the embedder's, cosine) and `bm25` (sparse, IDF modifier).
The BM25 vector is Qdrant's own (`qdrant_edge.Bm25`, whose token ids are those of the
server's `qdrant/bm25` model), computed here from the chunk text for both backends, so a
store moved between them searches the same and BM25 never costs an embedding request.
"""

from __future__ import annotations

import math
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import msgspec

from syncd.errors import ConfigError, StoreMismatch

if TYPE_CHECKING:  # annotations only: the CLI imports this module to parse its arguments
    import numpy as np
    import qdrant_edge as qe

    from syncd.config import QdrantConfig

# Fixed forever: changing it would change every point id.
_NAMESPACE = uuid.UUID("6f1c1d64-5c1e-4b44-9a59-3a5f0e0c7d21")
KEYWORD_FIELDS = ("source", "path")
# An integer index serves `trim` (chunk_index >= keep) and `document` (chunk order).
INTEGER_FIELDS = ("chunk_index",)
DENSE = "dense"
# Facets count every distinct value: the largest limit Qdrant accepts.
FACET_LIMIT = 2**31 - 1
BM25 = "bm25"
# Qdrant's default; on the bench's Python FAQ set k=60 (Cormack et al.) fell below dense.
RRF_K = 2
# Each list's weight in RRF (Qdrant divides a hit's rank by it): dense 3 to BM25 1, the
# split of Weaviate's default hybrid alpha (0.75). With equal weights hybrid fell just below
# dense on the bench's Python FAQ set; the bench reports the other weights beside it.
RRF_WEIGHTS = {DENSE: 3.0, BM25: 1.0}
# Each prefetch hands RRF this many candidates per wanted hit (at least _MIN_CANDIDATES).
_CANDIDATES_PER_HIT = 4
_MIN_CANDIDATES = 50
# Points copied per request when a collection is upgraded to the two-vector layout.
UPGRADE_BATCH = 1000
# `metadata.KEY`: plain keys only, so a key cannot reach outside `metadata`.
_METADATA_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def point_id(source: str, path: str, chunk_index: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{source}\x00{path}\x00{chunk_index}"))


@dataclass(frozen=True)
class PointData:
    id: str
    vector: np.ndarray
    payload: dict[str, Any]


@dataclass(frozen=True)
class Record:
    """A point as a store holds it, both vectors as they are: what `migrate` copies."""

    id: str
    dense: list[float]
    bm25: qe.SparseVector
    payload: dict[str, Any]


@dataclass(frozen=True)
class StoredPoint:
    """A point as the store holds it, for `syncd verify`."""

    id: str
    payload: dict[str, Any]
    #: Length of its dense vector (0: it has none).
    dimension: int


@dataclass(frozen=True)
class Hit:
    score: float
    payload: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The one shape of a hit: `search --json`, GET /search and MCP."""
        p = self.payload
        return {
            "score": round(self.score, 4),
            "source": p.get("source"),
            "path": p.get("path"),
            "chunk_index": p.get("chunk_index"),
            "chunk_count": p.get("chunk_count"),
            "page": p.get("page"),
            "title": p.get("title"),
            "format": p.get("format"),
            "text": p.get("text"),
        }


def ranked(points: Iterable[Any]) -> list[Hit]:
    """Hits best first, and hits of equal score (RRF gives many) in document order, so a
    query answers the same every time and in both engines, whose tie orders differ."""
    hits = [Hit(p.score, p.payload or {}) for p in points]
    return sorted(
        hits,
        key=lambda h: (
            -h.score,
            str(h.payload.get("source")),
            str(h.payload.get("path")),
            h.payload.get("chunk_index") or 0,
        ),
    )


# Hits one search may return.
MAX_LIMIT = 100

Mode = Literal["hybrid", "dense", "keyword"]
MODES: tuple[Mode, ...] = ("hybrid", "dense", "keyword")


@dataclass(frozen=True)
class SearchQuery:
    """`dense` is the query's embedding (None only for mode keyword); `text` feeds BM25.

    `path_glob` matches the document path (wcmatch, `**` spans directories, a pattern
    without `/` matches the file name at any depth); `where` is `metadata.KEY == VALUE`.
    """

    text: str
    #: Filled in by the engine, which embeds `text` as a query unless the mode is keyword.
    dense: np.ndarray | None = None
    mode: Mode = "hybrid"
    limit: int = 10
    source: str | None = None
    path_glob: str | None = None
    where: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"search mode {self.mode!r}: expected one of {', '.join(MODES)}")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise ConfigError(f"search limit {self.limit}: expected 1 to {MAX_LIMIT}")
        for key in self.where:
            if not _METADATA_KEY.match(key):
                raise ConfigError(f"--where {key}=...: keys are letters, digits, _ and -")

    @property
    def candidates(self) -> int:
        """How many hits each prefetch hands to the fusion."""
        return max(self.limit * _CANDIDATES_PER_HIT, _MIN_CANDIDATES)


def parse_where(pairs: Iterable[str]) -> dict[str, str]:
    """`KEY=VALUE` strings (split at the first `=`) → {key: value}."""
    where = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--where {pair!r}: expected KEY=VALUE")
        where[key] = value
    return where


def dense_size(vector: Any) -> int:
    """Length of the dense vector in what a scroll returns (named vectors or one list)."""
    if isinstance(vector, dict):
        vector = vector.get(DENSE)
    return len(vector) if vector is not None else 0


OldPoint = tuple[str, list[float], dict[str, Any]]


def upgraded(old: Iterable[OldPoint]) -> Iterator[list[Record]]:
    """Points of the old layout (id, dense vector, payload) as records of the two-vector
    one, `UPGRADE_BATCH` at a time, BM25 from each payload's text: nothing is embedded."""
    batch: list[OldPoint] = []
    for point in old:
        batch.append(point)
        if len(batch) == UPGRADE_BATCH:
            yield _with_bm25(batch)
            batch = []
    if batch:
        yield _with_bm25(batch)


def _with_bm25(batch: list[OldPoint]) -> list[Record]:
    from syncd.store import bm25

    sparse = bm25.documents([payload.get("text", "") for _, _, payload in batch])
    return [
        Record(i, dense, s, payload) for (i, dense, payload), s in zip(batch, sparse, strict=True)
    ]


def to_records(points: list[PointData]) -> list[Record]:
    """Points as syncd writes them: BM25 from each chunk's text (many at once in a worker)."""
    from syncd.store import bm25

    sparse = bm25.documents([p.payload.get("text", "") for p in points])
    return [
        Record(p.id, p.vector.tolist(), s, p.payload) for p, s in zip(points, sparse, strict=True)
    ]


def legs(query: SearchQuery) -> list[tuple[str, list[float] | qe.SparseVector]]:
    """(vector name, query vector) per list to fuse; a text of stopwords only has no BM25 leg."""
    out: list[tuple[str, list[float] | qe.SparseVector]] = []
    if query.mode != "keyword":
        if query.dense is None:
            raise ValueError(f"search mode {query.mode} needs the query's embedding")
        out.append((DENSE, query.dense.tolist()))
    if query.mode != "dense":
        from syncd.store import bm25

        sparse = bm25.model().embed_query(query.text)
        if sparse.indices:
            out.append((BM25, sparse))
    return out


def match_glob(paths: Iterable[str], pattern: str) -> list[str]:
    """The paths a `--path` glob selects; Qdrant has no glob match, so it gets this list."""
    from wcmatch import glob

    # No slash: match the file name at any depth, as .gitignore and rsync do.
    flags = glob.GLOBSTAR | glob.MATCHBASE
    return [p for p in paths if glob.globmatch(p, pattern, flags=flags)]


def where_values(value: str) -> list[str | int | bool]:
    """What `KEY=VALUE` may equal in JSON: front matter `version: 3` is an int, not "3"."""
    values: list[str | int | bool] = [value]
    if re.fullmatch(r"-?[0-9]+", value):
        values.append(int(value))
    if value.lower() in ("true", "false"):
        values.append(value.lower() == "true")
    return values


@dataclass(frozen=True)
class Identity:
    """What the collection was built with."""

    model: str
    dimension: int


class Store(Protocol):
    #: What the collection was built with.
    identity: Identity

    def upsert(self, points: list[PointData]) -> None: ...

    def upsert_records(self, records: list[Record]) -> None:
        """Write points with both vectors as given (a copy from another store)."""
        ...

    def scroll(
        self, offset: str | None = None, limit: int = UPGRADE_BATCH
    ) -> tuple[list[Record], str | None]:
        """One page of every point in id order, and the offset of the next page (None: done)."""
        ...

    def retrieve(self, ids: list[str]) -> list[Record]:
        """These points, those that exist, in no particular order."""
        ...

    def count_by_source(self) -> dict[str, int]:
        """Points per source."""
        ...

    def delete_documents(self, source: str, paths: list[str]) -> None:
        """Remove every point of these documents."""
        ...

    def trim(self, source: str, paths: list[str], keep: int) -> None:
        """Remove these documents' points with chunk_index >= keep."""
        ...

    def count(self, source: str) -> int:
        """Points of one source."""
        ...

    def chunk_counts(self, source: str) -> dict[str, int]:
        """Points per path of one source, as the store holds them."""
        ...

    def search(self, query: SearchQuery) -> list[Hit]:
        """The best chunks, best first; hybrid fuses dense and BM25 with RRF."""
        ...

    def document(self, source: str, path: str) -> list[dict[str, Any]]:
        """The payloads of one document's points in chunk order."""
        ...

    def points(self, source: str) -> Iterator[StoredPoint]:
        """Every point of one source, fetched a page at a time (memory stays flat)."""
        ...

    def delete_points(self, ids: list[str]) -> None: ...

    def optimize(self) -> None:
        """Index what the last writes added (Edge asks to be told; a server does it alone)."""
        ...

    def close(self) -> None: ...


def mismatch(found: Identity, wanted: Identity, where: str) -> StoreMismatch:
    dims = f" ({wanted.dimension} dims)" if wanted.dimension else ""
    return StoreMismatch(
        f"{where} was built with {found.model} ({found.dimension} dims), but the embedder is "
        f"{wanted.model}{dims}. To switch without downtime, put the new embedder in "
        "`embedder_next` and the one it was built with in `embedder`; or use a new "
        "qdrant.collection, or rebuild this one with `syncd resync --force`."
    )


def next_index(config: QdrantConfig, model_id: str) -> QdrantConfig:
    """Where the index of a new embedder is built: beside the active one, never in its place.

    On a server a collection named after the model, which the alias `{collection}` will
    name; embedded, the shard `{collection}.next`, renamed into place at the switch.
    """
    if config.url:
        slug = re.sub(r"[^A-Za-z0-9_-]+", "-", model_id).strip("-")
        return msgspec.structs.replace(config, collection=f"{config.collection}-{slug}")
    return msgspec.structs.replace(config, collection=f"{config.collection}.next")


def promote(config: QdrantConfig, built: QdrantConfig) -> None:
    """Make the index at `built` the active one and remove the old one, atomically for
    readers of `config.collection`. Both must be closed; finishes a promotion a crash cut."""
    if config.url:
        from syncd.store.server import promote_collection

        promote_collection(config, built.collection)
    else:
        from syncd.store.edge import promote_shard

        promote_shard(config.path / config.collection, built.path / built.collection)


def drop(config: QdrantConfig) -> None:
    """Remove an index (one built for an embedder no longer wanted), if it exists."""
    if config.url:
        from syncd.store.server import drop_collection

        drop_collection(config)
    else:
        from syncd.store.edge import drop_shard

        drop_shard(config.path / config.collection)


def same_payload(a: object, b: object) -> bool:
    """Equal JSON, but for the last digit of a float: Qdrant Edge's JSON parser may round
    a float's 17th significant digit (an mtime of 1795605043.1500661 reads back ...066)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, int | float) and isinstance(b, int | float) and math.isclose(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_payload(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_payload(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def open_store(
    config: QdrantConfig,
    identity: Identity | None,
    rebuild: bool = False,
    create: bool = True,
    process: bool = False,
) -> Store | None:
    """Open the collection, creating it if missing unless `create` is false (then None).

    A collection built with another embedder is an error unless `rebuild`, which empties it.
    With `identity` None, an existing collection is taken as it was built (`migrate` reads
    a store without starting its embedder) and a missing one is never created. With
    `process` (the commands that sync), the embedded shard is run by a process of its own.
    """
    if config.url:
        from syncd.store.server import ServerStore

        return ServerStore.connect(config, identity, rebuild, create)
    if process:
        from syncd.store.process import ShardProcess as EdgeStore
    else:
        from syncd.store.edge import EdgeStore

    return EdgeStore.open(config.path / config.collection, identity, rebuild, create)


def seal(config: QdrantConfig, identity: Identity) -> str | None:
    """A digest of the embedded shard's files (the path, size, mtime and inode of each) and
    of the embedder that built it: any write to the shard, by any process, and any swap of
    it changes the digest. None for a server, whose writes leave nothing here to look at.

    The engine records it when it closes a store holding just the points its state
    expects, so a resync can trust that count without loading the shard (at a million
    points, a load alone takes ~1.7 GB).
    """
    if config.url:
        return None
    import hashlib  # here: `--version` and `status` import this module, not OpenSSL

    files = []
    for directory, _, names in os.walk(config.path / config.collection):
        for name in names:
            try:
                st = os.stat(os.path.join(directory, name))
            except OSError:  # gone meanwhile: the shard is changing, no digest will match
                return None
            files.append(f"{directory}/{name}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}")
    if not files:
        return None
    digest = hashlib.sha256("\n".join(sorted(files)).encode()).hexdigest()
    return f"{identity.model}\0{identity.dimension}\0{digest}"


class PendingStore:
    """A collection to be created by its first write, from the size of its vectors.

    For an embedder whose dimension is not known yet (a remote API never asked before), so
    a first sync spends no request on asking. Until that write it holds nothing.
    """

    def __init__(self, config: QdrantConfig, model: str, process: bool) -> None:
        self._config = config
        self._process = process
        self._store: Store | None = None
        self.identity = Identity(model, 0)

    def _created(self, dimension: int) -> Store:
        if self._store is None:
            identity = Identity(self.identity.model, dimension)
            self._store = open_store(self._config, identity, process=self._process)
            self.identity = self._store.identity
        return self._store

    def upsert(self, points: list[PointData]) -> None:
        if points:
            self._created(len(points[0].vector)).upsert(points)

    def upsert_records(self, records: list[Record]) -> None:
        if records:
            self._created(len(records[0].dense)).upsert_records(records)

    def scroll(self, offset: str | None = None, limit: int = UPGRADE_BATCH):
        return self._store.scroll(offset, limit) if self._store else ([], None)

    def retrieve(self, ids: list[str]) -> list[Record]:
        return self._store.retrieve(ids) if self._store else []

    def count_by_source(self) -> dict[str, int]:
        return self._store.count_by_source() if self._store else {}

    def delete_documents(self, source: str, paths: list[str]) -> None:
        if self._store:
            self._store.delete_documents(source, paths)

    def trim(self, source: str, paths: list[str], keep: int) -> None:
        if self._store:
            self._store.trim(source, paths, keep)

    def count(self, source: str) -> int:
        return self._store.count(source) if self._store else 0

    def chunk_counts(self, source: str) -> dict[str, int]:
        return self._store.chunk_counts(source) if self._store else {}

    def search(self, query: SearchQuery) -> list[Hit]:
        return self._store.search(query) if self._store else []

    def document(self, source: str, path: str) -> list[dict[str, Any]]:
        return self._store.document(source, path) if self._store else []

    def points(self, source: str) -> Iterator[StoredPoint]:
        return self._store.points(source) if self._store else iter(())

    def delete_points(self, ids: list[str]) -> None:
        if self._store:
            self._store.delete_points(ids)

    def optimize(self) -> None:
        if self._store:
            self._store.optimize()

    def close(self) -> None:
        if self._store:
            self._store.close()
