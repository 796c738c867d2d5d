"""Qdrant behind one small interface: embedded (Qdrant Edge) or a server (qdrant-client).

Both hold the same points: one per chunk, a deterministic id, the payload of CONTRACT.md,
cosine distance, and a record of the embedder that made the vectors.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from syncd.config import Qdrant as QdrantConfig
from syncd.errors import StoreMismatch

# Fixed forever: changing it would change every point id.
_NAMESPACE = uuid.UUID("6f1c1d64-5c1e-4b44-9a59-3a5f0e0c7d21")
INDEXED_FIELDS = ("source", "path")


def point_id(source: str, path: str, chunk_index: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{source}\x00{path}\x00{chunk_index}"))


@dataclass(frozen=True)
class PointData:
    id: str
    vector: np.ndarray
    payload: dict[str, Any]


@dataclass(frozen=True)
class Hit:
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class Identity:
    """What the collection was built with."""

    model: str
    dimension: int


class Store(Protocol):
    def upsert(self, points: list[PointData]) -> None: ...

    def delete_documents(self, source: str, paths: list[str]) -> None:
        """Remove every point of these documents."""
        ...

    def trim(self, source: str, path: str, keep: int) -> None:
        """Remove the document's points with chunk_index >= keep."""
        ...

    def count(self, source: str) -> int:
        """Points of one source."""
        ...

    def chunk_counts(self, source: str) -> dict[str, int]:
        """Points per path of one source, as the store holds them."""
        ...

    def search(self, vector: np.ndarray, limit: int, source: str | None) -> list[Hit]: ...

    def close(self) -> None: ...


def mismatch(found: Identity, wanted: Identity, where: str) -> StoreMismatch:
    return StoreMismatch(
        f"{where} was built with {found.model} ({found.dimension} dims), but the embedder is "
        f"{wanted.model} ({wanted.dimension} dims). Use a new qdrant.collection, or rebuild "
        "this one with `syncd resync --force`."
    )


def open_store(
    config: QdrantConfig, identity: Identity, rebuild: bool = False, create: bool = True
) -> Store | None:
    """Open the collection, creating it if missing unless `create` is false (then None).

    A collection built with another embedder is an error unless `rebuild`, which empties it.
    """
    if config.url:
        from syncd.store.server import ServerStore

        return ServerStore.connect(config, identity, rebuild, create)
    from syncd.store.edge import EdgeStore

    return EdgeStore.open(config.path / config.collection, identity, rebuild, create)
