"""The installed command, run as a user would: subprocesses, exit codes, stdout and stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import qdrant_edge as qe

import syncd


def syncd_cmd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "syncd", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def project(docs: Path, make_config) -> Path:
    (docs / "bread.md").write_text(
        "---\ntitle: Sourdough\n---\n# Sourdough\n\nFeed the starter with flour and water every day.\n"
    )
    (docs / "tides.txt").write_text("The moon's gravity raises the tides twice a day.\n")
    make_config()
    return docs.parent


def test_version(project):
    out = syncd_cmd("--version", cwd=project)
    assert out.returncode == 0 and out.stdout.strip() == f"syncd {syncd.__version__}"


@pytest.mark.parametrize("args", [["--version"], ["status"]])
def test_quick_commands_import_no_heavy_library(project, args):
    """Start-up time: each of these costs tens of milliseconds, and neither command uses one."""
    code = (
        "import sys\nfrom syncd.cli import main\ntry:\n    main(sys.argv[1:])\n"
        "except SystemExit:\n    pass\nprint(' '.join(sys.modules), file=sys.stderr)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=project, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    loaded = {name.partition(".")[0] for name in out.stderr.split()}
    heavy = {"asyncio", "structlog", "rich", "pydantic", "numpy", "httpx", "qdrant_client"}
    heavy |= {"onnxruntime", "kreuzberg", "pebble", "redis", "watchdog", "qdrant_edge"}
    assert not loaded & heavy


def test_resync_status_and_search(project):
    out = syncd_cmd("resync", cwd=project)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("added 2, updated 0, deleted 0")

    status = json.loads(syncd_cmd("status", "--json", cwd=project).stdout)
    (docs,) = status["sources"]
    assert (docs["name"], docs["documents"], docs["pending"], docs["failed"]) == ("docs", 2, 0, [])
    assert docs["chunks"] == 2 and docs["last_sync"]

    found = syncd_cmd(
        "search", "how do I feed a sourdough starter", "--json", "--limit", "1", cwd=project
    )
    (hit,) = json.loads(found.stdout)["hits"]
    assert (hit["path"], hit["source"], hit["chunk_index"], hit["title"]) == (
        "bread.md",
        "docs",
        0,
        "Sourdough",
    )

    text = syncd_cmd("search", "ocean tides and the moon", cwd=project)
    assert text.returncode == 0 and text.stdout.splitlines()[0].split()[1] == "docs/tides.txt"


def test_resync_json_is_one_clean_document_on_stdout(project):
    out = syncd_cmd("resync", "--json", cwd=project)
    report = json.loads(out.stdout)
    assert (report["added"], report["failed"], report["texts_embedded"]) == (2, 0, 2)


def test_dry_run_prints_the_plan_and_changes_nothing(project):
    out = syncd_cmd("resync", "--dry-run", cwd=project)
    assert out.returncode == 0
    assert "2 to add" in out.stdout and "  add    bread.md" in out.stdout
    assert not (project / ".syncd" / "qdrant" / "syncd").exists()
    assert (
        json.loads(syncd_cmd("status", "--json", cwd=project).stdout)["sources"][0]["documents"]
        == 0
    )


def test_failed_document_gives_exit_1_and_is_listed(project):
    (project / "docs" / "photo.txt").write_bytes(b"\xff\xd8\xff\x00\x10JFIF")
    out = syncd_cmd("resync", cwd=project)
    assert out.returncode == 1
    assert "failed: docs/photo.txt: binary file" in out.stderr
    status = syncd_cmd("status", cwd=project)
    assert "failed photo.txt: binary file (contains NUL bytes)" in status.stdout


def test_bad_config_exits_2_naming_the_key(project):
    (project / "config.yaml").write_text(
        "sources: [{name: docs, path: ./docs}]\nembedder: {batch_sise: 3}\n"
    )
    out = syncd_cmd("resync", cwd=project)
    assert out.returncode == 2
    assert "embedder.batch_sise" in out.stderr and out.stderr.startswith("Error: ")


def test_collection_of_another_embedder_exits_2_with_the_fix(project):
    shard = project / ".syncd" / "qdrant" / "syncd"
    qe.EdgeShard.create(
        str(shard), qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=8, distance=qe.Distance.Cosine))
    ).close()
    out = syncd_cmd("resync", cwd=project)
    assert out.returncode == 2 and "resync --force" in out.stderr
    forced = syncd_cmd("resync", "--force", cwd=project)
    assert forced.returncode == 0, forced.stderr
    assert syncd_cmd("resync", cwd=project).returncode == 0


def test_store_held_by_another_process_exits_3(project):
    assert syncd_cmd("resync", cwd=project).returncode == 0
    holder = qe.EdgeShard.load(str(project / ".syncd" / "qdrant" / "syncd"))
    try:
        out = syncd_cmd("search", "tides", cwd=project)
    finally:
        holder.close()
    assert out.returncode == 3 and "in use by another syncd process" in out.stderr


@pytest.mark.parametrize("provider", ["local", "ai21"])
def test_noop_resync_leaves_the_store_closed_and_a_resync_with_work_writes(
    project, make_config, fake_embed, provider
):
    """A resync with nothing to do reads the state and the files only: Qdrant Edge is not
    even imported, and the shard's files stay as they were (loading it rewrites some).
    One with work opens the store, and writes. With an API, whose dimension the first
    sync learns from its first answer, the very next resync is a no-op of this kind too."""
    if provider == "ai21":
        make_config(embedder=fake_embed.embedder())
    assert syncd_cmd("resync", cwd=project).returncode == 0
    shard = project / ".syncd" / "qdrant" / "syncd"

    def files() -> dict[str, tuple[int, int]]:
        return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in shard.rglob("*")}

    before = files()
    code = (
        "import sys\nfrom syncd.cli import main\ncode = main(sys.argv[1:])\n"
        "print(' '.join(sys.modules), file=sys.stderr)\nsys.exit(code)"
    )
    noop = subprocess.run(
        [sys.executable, "-c", code, "resync"], cwd=project, capture_output=True, text=True
    )
    assert noop.returncode == 0, noop.stderr
    assert noop.stdout.startswith("added 0, updated 0, deleted 0, unchanged 2")
    loaded = {name.partition(".")[0] for name in noop.stderr.split()}
    assert not loaded & {"qdrant_edge", "qdrant_client", "numpy", "onnxruntime", "httpx"}
    assert files() == before

    (project / "docs" / "tides.txt").write_text("Spring tides follow the full moon.\n")
    out = syncd_cmd("resync", cwd=project)
    assert out.returncode == 0 and out.stdout.startswith("added 0, updated 1"), out.stderr
    assert files() != before
    hits = json.loads(syncd_cmd("search", "spring tides", "--json", cwd=project).stdout)["hits"]
    assert hits[0]["text"] == "Spring tides follow the full moon."


def test_unknown_source_is_a_usage_error(project):
    out = syncd_cmd("resync", "--source", "nope", cwd=project)
    assert out.returncode == 2 and "nope" in out.stderr


def test_refused_command_changes_nothing(project, fake_embed):
    import sqlite3

    assert syncd_cmd("resync", cwd=project).returncode == 0
    db = project / ".syncd" / "state.db"

    def cached() -> int:
        with sqlite3.connect(db) as c:
            return c.execute("SELECT count(*) FROM vectors").fetchone()[0]

    before = cached()
    assert before > 0
    other = subprocess.run(
        [sys.executable, "-m", "syncd", "search", "tides"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "SYNCD_EMBEDDER__PROVIDER": "openai",
            "SYNCD_EMBEDDER__MODEL": "other-model",
            "SYNCD_EMBEDDER__BASE_URL": f"{fake_embed.url}/v1",
            "SYNCD_EMBEDDER__API_KEY": fake_embed.key,
        },
    )
    assert other.returncode == 2 and "resync --force" in other.stderr, other.stderr
    assert cached() == before
