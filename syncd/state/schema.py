"""The state database's schema: ordered, append-only migrations (PRAGMA user_version
records how many have run; each runs in a transaction)."""

# Ordered and append-only: PRAGMA user_version records how many have run.
MIGRATIONS = [
    """
    CREATE TABLE documents (
        source TEXT NOT NULL,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        doc_hash TEXT,
        chunk_count INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL CHECK (status IN ('done', 'failed', 'skipped')),
        error TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        synced_at REAL NOT NULL,
        PRIMARY KEY (source, path)
    ) WITHOUT ROWID;
    CREATE TABLE chunks (
        source TEXT NOT NULL,
        path TEXT NOT NULL,
        chunk_index INTEGER NOT NULL,
        chunk_hash TEXT NOT NULL,
        PRIMARY KEY (source, path, chunk_index)
    ) WITHOUT ROWID;
    CREATE INDEX chunks_by_hash ON chunks (chunk_hash);
    -- Vectors of chunk texts already embedded, so an unchanged text is never sent again.
    CREATE TABLE vectors (
        chunk_hash TEXT PRIMARY KEY,
        vector BLOB NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE sources (
        name TEXT PRIMARY KEY,
        last_sync REAL,
        pending INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    """,
    """
    -- Queue sources cannot be replayed, so the last text of each document is kept to
    -- repair the store from, with the stream entry that set it (later entries win;
    -- a delete leaves a row with NULL text, so an older redelivered entry stays dead).
    CREATE TABLE queued_documents (
        source TEXT NOT NULL,
        path TEXT NOT NULL,
        entry_id TEXT NOT NULL,
        text TEXT,
        metadata TEXT,
        PRIMARY KEY (source, path)
    ) WITHOUT ROWID;
    """,
    """
    -- `syncd migrate`: the first point not yet copied to each target, so a copy
    -- interrupted at any moment resumes there (points are in id order).
    CREATE TABLE copy_progress (
        target TEXT PRIMARY KEY,
        next_offset TEXT,
        copied INTEGER NOT NULL,
        started_at REAL NOT NULL
    ) WITHOUT ROWID;
    """,
    """
    -- What the last scan could not look at (the root is path ''), and deletions the
    -- mass-deletion guard holds back: both for `status` and /metrics.
    CREATE TABLE unlisted (
        source TEXT NOT NULL,
        path TEXT NOT NULL,
        error TEXT NOT NULL,
        PRIMARY KEY (source, path)
    ) WITHOUT ROWID;
    CREATE TABLE held_deletions (
        source TEXT NOT NULL,
        path TEXT NOT NULL,
        PRIMARY KEY (source, path)
    ) WITHOUT ROWID;
    -- When a cached vector was last used by a chunk: unused ones are kept for
    -- state.vector_retention_days, so a document that comes back embeds nothing.
    ALTER TABLE vectors ADD COLUMN last_used REAL;
    """,
    """
    -- Vectors of `embedder_next`, by chunk hash, while its index is built: apart from the
    -- active embedder's, so the two never mix. They become the cache at the switch.
    CREATE TABLE next_vectors (
        chunk_hash TEXT PRIMARY KEY,
        vector BLOB NOT NULL
    ) WITHOUT ROWID;
    """,
    """
    -- Vectors (1.5 KB a row at 384 dimensions) move to tables with a rowid. WITHOUT ROWID
    -- keeps each row in its key's B-tree, which suits rows under a twentieth of a page
    -- (SQLite's advice): with sha256 keys every insert split a page holding two rows, so a
    -- first sync wrote 3 times the bytes and spent 4 times the CPU on its cache. last_used
    -- is indexed: the sweep that ends every resync no longer reads every vector.
    CREATE TABLE vectors_new (
        chunk_hash TEXT PRIMARY KEY,
        vector BLOB NOT NULL,
        last_used REAL
    );
    INSERT INTO vectors_new SELECT chunk_hash, vector, last_used FROM vectors;
    DROP TABLE vectors;
    ALTER TABLE vectors_new RENAME TO vectors;
    CREATE INDEX vectors_by_last_used ON vectors (last_used);
    CREATE TABLE next_vectors_new (
        chunk_hash TEXT PRIMARY KEY,
        vector BLOB NOT NULL
    );
    INSERT INTO next_vectors_new SELECT chunk_hash, vector FROM next_vectors;
    DROP TABLE next_vectors;
    ALTER TABLE next_vectors_new RENAME TO next_vectors;
    """,
]
