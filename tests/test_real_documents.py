"""Documents written by others (tests/data/unstructured): every file is synced or reported
with a reason, no chunk breaks a bound, and a second reconcile embeds and reads nothing."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from conftest import points

from syncd.config import load_config
from syncd.engine import opened
from syncd.state import State

CORPUS = Path(__file__).parent / "data" / "unstructured"
DOCUMENTS = sorted(p.name for p in CORPUS.iterdir() if p.name not in ("LICENSE", "README.md"))


@pytest.mark.parametrize("max_chars", [1000, 300])
def test_real_documents_sync_or_say_why_and_keep_their_bounds(
    docs, make_config, embedder, max_chars
):
    for name in DOCUMENTS:
        shutil.copy(CORPUS / name, docs / name)
    settings = load_config(
        make_config(
            sources=[{"name": "docs", "path": "./docs", "include": ["**/*"]}],
            chunking={"max_chars": max_chars, "overlap_chars": max_chars // 10},
        )
    )

    async def reconcile(retry_failed: bool):
        async with opened(settings, embedder=embedder) as engine:
            return await engine.resync(retry_failed=retry_failed)

    first = asyncio.run(reconcile(retry_failed=True))
    assert first.added + first.failed + first.skipped == len(DOCUMENTS)

    state = State(settings.state.path)
    try:
        rows = state.documents("docs")
    finally:
        state.close()
    assert sorted(rows) == DOCUMENTS
    for row in rows.values():
        assert row.status == "done" or row.error, row.path
    synced = {p for p, r in rows.items() if r.status == "done"}
    # Found on this corpus: UTF-16 BE / UTF-32 text and UTF-16 XML fail as "binary";
    # password-protected PDF and XLSX fail saying so; .msg and old .doc are skipped.
    assert len(synced) >= 15, {p: r.error for p, r in rows.items()}
    assert "password" in rows["password.pdf"].error

    stored = points(settings).values()
    assert {p["path"] for p in stored} == {p for p in synced if rows[p].chunk_count}
    assert max(len(p["text"]) for p in stored) <= max_chars
    assert sum(rows[p].chunk_count for p in synced) == len(stored)

    embedder.reset()
    second = asyncio.run(reconcile(retry_failed=False))
    assert (second.added, second.updated, second.deleted) == (0, 0, 0)
    assert second.unchanged == len(DOCUMENTS) and embedder.texts == []
