"""A listing that fails never deletes; nothing changed costs nothing.

Tests run as root, and root reads through any permission bits. To get a real EACCES from
the kernel, the command runs under `setpriv` with CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH
dropped from its bounding set: still uid 0 (so it owns the state and store it writes),
but `chmod 000` on a directory or file now refuses it as it would refuse any user.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import points
from daemon_process import get, wait_until

from syncd.config import load_config

NO_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


def syncd(project: Path, *args: str, unprivileged: bool = False) -> subprocess.CompletedProcess:
    command = [*(NO_DAC if unprivileged else []), sys.executable, "-m", "syncd", *args]
    return subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=180)


def status(project: Path) -> dict:
    return json.loads(syncd(project, "status", "--json").stdout)["sources"][0]


def paths_in_store(project: Path) -> dict[str, set[str]]:
    """path → the texts of its points."""
    out: dict[str, set[str]] = {}
    for p in points(load_config(project / "config.yaml")).values():
        out.setdefault(p["path"], set()).add(p["text"])
    return out


def note(i: int) -> str:
    return f"Note {i} is about the {i}th lighthouse on the northern coast and its keeper.\n"


@pytest.fixture
def project(docs: Path, make_config) -> Path:
    for rel in ("a.md", "sub/b.md", "sub/c.md"):
        (docs / rel).parent.mkdir(exist_ok=True)
        (docs / rel).write_text(f"# {rel}\n\nThe text of {rel}, about tides and harbours.\n")
    make_config()
    assert syncd(docs.parent, "resync").returncode == 0
    return docs.parent


def test_unlistable_directory_keeps_its_documents_until_it_can_be_listed(project, docs):
    before = paths_in_store(project)
    (docs / "sub").chmod(0)
    try:
        out = syncd(project, "resync", unprivileged=True)
        assert out.returncode == 1, out.stderr
        assert "unlisted (its documents are kept): docs/sub: Permission denied" in out.stderr
        assert paths_in_store(project) == before
        row = status(project)
        assert row["unlisted"] == [{"path": "sub", "error": "Permission denied"}]
        assert row["documents"] == 3
    finally:
        (docs / "sub").chmod(0o755)
    out = syncd(project, "resync", unprivileged=True)
    assert out.returncode == 0, out.stderr
    assert "unchanged 3" in out.stdout and "0 texts embedded" in out.stdout
    assert status(project)["unlisted"] == []


def test_unreadable_file_keeps_its_last_points_and_is_reported_failed(project, docs):
    before = paths_in_store(project)["a.md"]
    (docs / "a.md").write_text("# a.md\n\nA new text that cannot be read yet.\n")
    (docs / "a.md").chmod(0)
    try:
        out = syncd(project, "resync", unprivileged=True)
        assert out.returncode == 1
        assert "failed: docs/a.md: unreadable: Permission denied" in out.stderr
        assert paths_in_store(project)["a.md"] == before
        (failed,) = status(project)["failed"]
        assert failed["path"] == "a.md" and "Permission denied" in failed["reason"]
        assert status(project)["chunks"] == 3
    finally:
        (docs / "a.md").chmod(0o644)
    out = syncd(project, "resync", unprivileged=True)
    assert out.returncode == 0, out.stderr
    assert any("cannot be read yet" in t for t in paths_in_store(project)["a.md"])
    assert status(project)["failed"] == []


@pytest.mark.parametrize("how", ["emptied", "missing"])
def test_empty_or_missing_root_is_an_unavailable_source(project, docs, how):
    before = paths_in_store(project)
    docs.rename(project / "away")
    if how == "emptied":
        docs.mkdir()  # what an unmounted share's mount point looks like
    out = syncd(project, "resync")
    assert out.returncode == 3, out.stderr
    assert str(docs) in out.stderr
    assert "syncd resync --source docs --allow-delete" in out.stderr
    assert paths_in_store(project) == before
    assert status(project)["documents"] == 3

    if how == "emptied":
        shutil.rmtree(docs)
    (project / "away").rename(docs)
    out = syncd(project, "resync")
    assert out.returncode == 0 and "0 texts embedded" in out.stdout


def test_allow_delete_confirms_an_emptied_root(project, docs):
    shutil.rmtree(docs)
    docs.mkdir()
    out = syncd(project, "resync", "--source", "docs", "--allow-delete")
    assert out.returncode == 0, out.stderr
    assert "deleted 3" in out.stdout
    assert paths_in_store(project) == {}


def test_mass_deletion_is_held_until_allow_delete(docs, make_config):
    for i in range(25):
        (docs / f"n{i:02}.txt").write_text(note(i))
    make_config()
    project = docs.parent
    assert syncd(project, "resync").returncode == 0
    for i in range(15):  # 60 % of 25
        (docs / f"n{i:02}.txt").unlink()
    (docs / "n20.txt").write_text(note(20) + "An edit that is applied at once.\n")

    out = syncd(project, "resync")
    assert out.returncode == 1
    assert "held back 15 deletions" in out.stderr and "--allow-delete" in out.stderr
    assert "updated 1" in out.stdout
    assert len(paths_in_store(project)) == 25
    assert any("applied at once" in t for t in paths_in_store(project)["n20.txt"])
    assert len(status(project)["held_deletions"]) == 15
    assert "deletions held" in syncd(project, "status").stdout

    dry = json.loads(syncd(project, "resync", "--dry-run", "--json").stdout)
    assert len(dry["plans"][0]["held"]) == 15 and dry["plans"][0]["delete"] == []

    out = syncd(project, "resync", "--allow-delete")
    assert out.returncode == 0, out.stderr
    assert "deleted 15" in out.stdout
    assert sorted(paths_in_store(project)) == [f"n{i:02}.txt" for i in range(15, 25)]
    assert status(project)["held_deletions"] == []


def test_max_delete_fraction_one_disables_the_guard(docs, make_config, resync):
    for i in range(20):
        (docs / f"n{i:02}.txt").write_text(note(i))
    settings = load_config(
        make_config(sources=[{"name": "docs", "path": "./docs", "max_delete_fraction": 1.0}])
    )
    resync(settings)
    for i in range(19):
        (docs / f"n{i:02}.txt").unlink()
    report = resync(settings)
    assert (report.deleted, report.held) == (19, 0)


def test_small_source_is_not_guarded(docs, settings, resync):
    for i in range(19):
        (docs / f"n{i:02}.txt").write_text(note(i))
    resync(settings)
    for i in range(18):
        (docs / f"n{i:02}.txt").unlink()
    assert resync(settings).deleted == 18


def test_a_document_that_comes_back_embeds_nothing(docs, settings, resync, embedder):
    (docs / "kept.md").write_text(note(1))
    (docs / "away.md").write_text(note(2) + note(3))
    resync(settings)
    moved = (docs / "away.md").read_bytes()
    (docs / "away.md").unlink()
    assert resync(settings).deleted == 1
    (docs / "back.md").write_bytes(moved)
    embedder.reset()
    assert resync(settings).added == 1
    assert embedder.texts == []


def test_zero_retention_drops_unused_vectors_at_once(docs, make_config, resync, embedder):
    settings = load_config(
        make_config(state={"path": "./.syncd/state.db", "vector_retention_days": 0})
    )
    (docs / "kept.md").write_text(note(1))
    (docs / "away.md").write_text(note(2))
    resync(settings)
    (docs / "away.md").unlink()
    resync(settings)
    resync(settings)  # the stamp of the first pass is not older than now; this one drops it
    (docs / "away.md").write_text(note(2))
    embedder.reset()
    resync(settings)
    assert embedder.texts == [note(2).strip()]


def test_daemon_waits_out_an_unmounted_source_and_holds_mass_deletions(docs, make_daemon):
    for i in range(20):
        (docs / f"n{i:02}.txt").write_text(note(i))
    daemon = make_daemon(watch={"debounce_seconds": 0.2, "rescan_interval_seconds": 1})
    project = daemon.root
    daemon.start().wait_ready()
    docs.rename(project / "away")
    docs.mkdir()
    wait_until(lambda: get(daemon.url("/readyz"))[0] == 503, 30, "readyz 503 while unmounted")
    assert daemon.proc.poll() is None and daemon.status()["documents"] == 20
    docs.rmdir()
    (project / "away").rename(docs)
    daemon.wait_ready(timeout=60)

    for i in range(12):
        (docs / f"n{i:02}.txt").unlink()
    wait_until(lambda: len(daemon.status()["held_deletions"]) == 12, 30, "deletions held")
    metrics = get(daemon.url("/metrics"))[1]
    assert 'syncd_held_deletions{source="docs"} 12.0' in metrics
    assert daemon.status()["documents"] == 20

    out = syncd(project, "resync", "--allow-delete")  # through POST /resync?allow_delete=1
    assert out.returncode == 0, out.stderr
    assert "deleted 12" in out.stdout
    assert daemon.status()["documents"] == 8 and daemon.status()["held_deletions"] == []
    code, log = daemon.stop_with_log()
    assert code == 0
    assert "source_unavailable" in log and "deletions_held" in log


def test_no_op_resync_and_status_send_no_request_with_the_embedder_down(
    docs, make_config, fake_embed
):
    embedder = fake_embed.embedder(requests_per_minute=6000)
    make_config(embedder=embedder)
    project = docs.parent
    (docs / "a.md").write_text(note(1))
    assert syncd(project, "resync").returncode == 0
    fake_embed.log.clear()
    fake_embed.outage = 503
    for command in (["resync"], ["status"], ["verify"]):
        out = syncd(project, *command)
        assert out.returncode == 0, out.stderr
    assert fake_embed.log == []

    fake_embed.outage = None
    make_config(embedder={**embedder, "api_key": "wrong-key"})
    (docs / "b.md").write_text(note(2))
    out = syncd(project, "resync")
    assert out.returncode == 3
    assert "refused the key" in out.stderr
    assert status(project)["documents"] == 1
