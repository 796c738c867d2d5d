"""`syncd verify` finds drift the totals cannot show, and `--repair` fixes it from the cache."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import qdrant_edge as qe
from conftest import points
from daemon_process import get, wait_until
from test_engine import assert_mirrors, paragraph, write

from syncd.config import Settings, load_config


def syncd(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "syncd", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=180,
    )


def verify_json(project: Path, *args: str) -> tuple[int, dict]:
    out = syncd(project, "verify", "--json", *args)
    return out.returncode, json.loads(out.stdout)


class Shard:
    """The embedded collection opened with Qdrant Edge itself, as a user's tool would."""

    def __init__(self, settings: Settings) -> None:
        self.shard = qe.EdgeShard.load(str(settings.qdrant.path / settings.qdrant.collection))

    def __enter__(self) -> Shard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shard.flush()
        self.shard.close()

    def records(self) -> list:
        records, _ = self.shard.scroll(
            qe.ScrollRequest(limit=1000, with_payload=True, with_vector=True)
        )
        return sorted(records, key=lambda r: (r.payload["path"], r.payload["chunk_index"]))

    def delete(self, point_id: str) -> None:
        self.shard.update(qe.UpdateOperation.delete_points([point_id]))

    def put(self, point_id: str, vector: dict, payload: dict) -> None:
        self.shard.update(qe.UpdateOperation.upsert_points([qe.Point(point_id, vector, payload)]))


@pytest.fixture
def project(docs: Path, make_config) -> Path:
    for t in ("tides", "bees", "glass"):
        write(docs, f"{t}.md", f"# {t}\n\n" + "\n\n".join(paragraph(t, n) for n in range(6)))
    make_config()
    assert syncd(docs.parent, "resync").returncode == 0
    return docs.parent


def test_a_deleted_point_and_a_stray_one_are_found_and_repaired(project):
    settings = load_config(project / "config.yaml")
    with Shard(settings) as shard:
        gone, copied = shard.records()[0], shard.records()[-1]
        shard.delete(str(gone.id))
        # Totals stay equal: the stray duplicates another chunk under a foreign id.
        shard.put(str(uuid.uuid4()), copied.vector, copied.payload)
    assert len(points(settings)) == len(set(points(settings)))

    code, found = verify_json(project)
    assert code == 1 and not found["clean"]
    assert found["drift"] == {"missing": 1, "stray": 1, "payload": 0, "vector_size": 0}
    kinds = {(d["kind"], d["path"]) for d in found["listed"]}
    assert kinds == {("missing", gone.payload["path"]), ("stray", copied.payload["path"])}

    code, repaired = verify_json(project, "--repair")
    assert code == 0 and repaired["repaired"] and repaired["texts_embedded"] == 0

    code, after = verify_json(project)
    assert code == 0 and after["clean"] and after["points"] == found["points"]
    assert_mirrors(settings)


def test_wrong_payload_and_unknown_path_are_drift(project):
    settings = load_config(project / "config.yaml")
    with Shard(settings) as shard:
        first = shard.records()[0]
        shard.put(str(first.id), first.vector, {**first.payload, "text": "edited by hand"})
        shard.put(str(uuid.uuid4()), first.vector, {**first.payload, "path": "ghost.md"})
    out = syncd(project, "verify")
    assert out.returncode == 1
    assert f"payload: docs/{first.payload['path']}: chunk 0: text" in out.stderr
    assert "stray: docs/ghost.md: no such document" in out.stderr
    assert syncd(project, "verify", "--repair").returncode == 0
    assert syncd(project, "verify").returncode == 0
    assert_mirrors(settings)


def test_changed_files_are_pending_not_drift(project, docs):
    write(docs, "bees.md", "# bees\n\nRewritten since the last sync.\n")
    write(docs, "new.md", "# new\n\nNot synced yet.\n")
    code, found = verify_json(project)
    assert code == 0 and found["clean"]
    assert found["pending"] == ["docs/bees.md", "docs/new.md"]


def test_daemon_repairs_drift_on_its_verify_interval(project, make_daemon):
    settings = load_config(project / "config.yaml")
    with Shard(settings) as shard:
        records = shard.records()
        shard.delete(str(records[0].id))
        shard.put(str(uuid.uuid4()), records[1].vector, records[1].payload)
    daemon = make_daemon(watch={"debounce_seconds": 0.2, "verify_interval_seconds": 1})
    daemon.start().wait_ready()
    wait_until(
        lambda: 'syncd_drift_points{kind="missing"}' in get(daemon.url("/metrics"))[1],
        30,
        "a verify ran",
    )
    code, log = daemon.stop_with_log()
    assert code == 0
    events = [json.loads(line) for line in log.splitlines() if "verify_finished" in line]
    assert (events[0]["missing"], events[0]["stray"], events[0]["repaired"]) == (1, 1, True)
    code, after = verify_json(project)
    assert code == 0 and after["clean"]
