"""A lost or unreadable state file is rebuilt from the store: unchanged files embed nothing."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from conftest import points
from structlog.testing import capture_logs

from syncd.state import State


def write_corpus(docs: Path) -> None:
    for topic in ("tides", "bees", "glass", "maps"):
        paragraphs = [
            f"Paragraph {n} about {topic}: one idea, an example numbered {n * 7}, and a remark."
            for n in range(12)
        ]
        (docs / f"{topic}.md").write_text(f"# {topic}\n\n" + "\n\n".join(paragraphs))


def test_lost_state_file_is_rebuilt_and_the_resync_embeds_nothing(
    docs, make_config, settings, resync, embedder
):
    write_corpus(docs)
    first = resync(settings)
    assert first.added == 4 and first.texts_embedded > 0
    before = points(settings)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{settings.state.path}{suffix}").unlink(missing_ok=True)
    embedder.reset()
    with capture_logs() as logs:
        again = resync(settings)
    assert embedder.texts == []
    assert again.unchanged == 4 and again.added == again.updated == 0
    assert next(e for e in logs if e["event"] == "state_rebuilt")["documents"] == 4
    assert points(settings) == before
    # the rebuilt rows learnt each file's size on that one read: the next plan reads nothing
    state = State(settings.state.path)
    assert all(d.size > 0 for d in state.documents("docs").values())
    assert state.status("docs").chunks == len(before)
    state.close()


def test_edited_file_while_state_was_lost_embeds_only_its_new_chunk(
    docs, settings, resync, embedder
):
    write_corpus(docs)
    resync(settings)
    settings.state.path.unlink()
    bees = docs / "bees.md"
    bees.write_text(bees.read_text() + "\n\nA new closing paragraph about bees and clover.\n")
    embedder.reset()
    report = resync(settings)
    assert report.updated == 1 and report.unchanged == 3
    assert len(embedder.texts) == 1 and "clover" in embedder.texts[0]


def test_unreadable_state_is_moved_aside_and_the_cli_says_it_was_rebuilt(
    docs, make_config, settings, resync
):
    write_corpus(docs)
    resync(settings)
    state_file = settings.state.path
    for suffix in ("-wal", "-shm"):
        Path(f"{state_file}{suffix}").unlink(missing_ok=True)
    state_file.write_bytes(b"this is not an SQLite database" * 100)
    done = subprocess.run(
        [sys.executable, "-m", "syncd", "resync"],
        cwd=make_config().parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "state rebuilt from the store" in done.stderr
    assert "moved to" in done.stderr
    assert "0 texts embedded" in done.stdout
    (aside,) = state_file.parent.glob("state.db.corrupt-*")
    assert aside.read_bytes().startswith(b"this is not an SQLite database")


def test_a_state_in_use_is_never_rebuilt(docs, settings, resync, embedder):
    write_corpus(docs)
    resync(settings)
    with capture_logs() as logs:
        resync(settings)
    assert not [e for e in logs if e["event"] == "state_rebuilt"]


def test_cached_vectors_survive_the_move_to_tables_with_a_rowid(tmp_path):
    import numpy as np

    from syncd.state.schema import MIGRATIONS

    path = tmp_path / "state.db"
    db = sqlite3.connect(path, isolation_level=None)
    for script in MIGRATIONS[:5]:  # a state written before the move
        for statement in script.split(";"):
            if statement.strip():
                db.execute(statement)
    db.execute("PRAGMA user_version=5")
    vector = np.arange(4, dtype=np.float32)
    db.execute("INSERT INTO vectors VALUES ('a', ?, 12.5)", (vector.tobytes(),))
    db.execute("INSERT INTO next_vectors VALUES ('b', ?)", ((vector + 1).tobytes(),))
    db.close()
    state = State(path)
    assert state.vectors(["a"])["a"].tolist() == [0, 1, 2, 3]
    assert state.next_vectors(["b"])["b"].tolist() == [1, 2, 3, 4]
    assert state.db.execute("SELECT last_used FROM vectors").fetchall() == [(12.5,)]
    tables = dict(state.db.execute("SELECT name, sql FROM sqlite_master WHERE type='table'"))
    assert "WITHOUT ROWID" not in tables["vectors"] + tables["next_vectors"]
    state.close()
