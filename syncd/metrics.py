"""Prometheus metrics, in syncd's own registry (served at /metrics by `syncd run`)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from syncd.config import Settings
    from syncd.state import State

REGISTRY = CollectorRegistry()

documents_synced = Counter(
    "syncd_documents_synced", "Documents written to Qdrant (added or updated)", registry=REGISTRY
)
chunks_embedded = Counter(
    "syncd_chunks_embedded", "Chunk texts sent to the embedder", registry=REGISTRY
)
embed_requests = Counter(
    "syncd_embed_requests", "Embedding requests by outcome", ["status"], registry=REGISTRY
)
embed_request_seconds = Histogram(
    "syncd_embed_request_seconds", "Duration of one embedding request", registry=REGISTRY
)
embed_ratelimit_wait_seconds = Counter(
    "syncd_embed_ratelimit_wait_seconds",
    "Time spent waiting for the client-side rate limit",
    registry=REGISTRY,
)
pending_documents = Gauge(
    "syncd_pending_documents", "Documents waiting to be synced", ["source"], registry=REGISTRY
)
failed_documents = Gauge(
    "syncd_failed_documents", "Documents whose last sync failed", ["source"], registry=REGISTRY
)
sync_lag_seconds = Gauge(
    "syncd_sync_lag_seconds", "Seconds since the last completed sync", ["source"], registry=REGISTRY
)

stream_lag = Gauge(
    "syncd_stream_lag",
    "Stream entries not yet delivered to the group",
    ["source"],
    registry=REGISTRY,
)
stream_pending = Gauge(
    "syncd_stream_pending", "Entries delivered but not acknowledged", ["source"], registry=REGISTRY
)
dead_letters = Gauge(
    "syncd_dead_letters", "Entries in the dead-letter stream", ["source"], registry=REGISTRY
)
held_deletions = Gauge(
    "syncd_held_deletions",
    "Deletions held back by the mass-deletion guard until `resync --allow-delete`",
    ["source"],
    registry=REGISTRY,
)
drift_points = Gauge(
    "syncd_drift_points",
    "Points found wrong by the last verify, by kind",
    ["kind"],
    registry=REGISTRY,
)


def observe_state(state: State, settings: Settings) -> None:
    """Refresh the gauges that SQLite knows, just before a scrape."""
    for source in settings.sources:
        row = state.status(source.name)
        pending_documents.labels(source.name).set(row.pending)
        failed_documents.labels(source.name).set(len(row.failed))
        held_deletions.labels(source.name).set(len(row.held_deletions))
        if row.last_sync:
            sync_lag_seconds.labels(source.name).set(max(0.0, time.time() - row.last_sync))
