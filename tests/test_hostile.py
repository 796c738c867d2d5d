"""Hostile files beside ordinary ones, through the installed command and the daemon: each
hostile one costs its own document and nothing else (issue 13)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from conftest import points
from daemon_process import get, wait_until
from hostile import alias_bomb, docx_bomb, nested_yaml

from syncd.config import load_config

ORDINARY = {
    "bread.md": "# Bread\n\nFeed the sourdough starter with flour and water every day.\n",
    "tides.txt": "The moon's gravity raises the tides twice a day.\n",
    "bees.md": "---\ntitle: Bees\ntags: [garden]\n---\nBees dance to show where the flowers are.\n",
}
HOSTILE = {
    "nan.md": "---\nscore: .nan\n---\nA document whose front matter holds NaN.\n",
    "deep.md": f"---\n{nested_yaml(2000)}\n---\nNested two thousand deep.\n",
    "bomb.md": f"---\n{alias_bomb()}\n---\nBillion laughs.\n",
    "inf.md": "---\nratio: -.inf\n---\nMinus infinity.\n",
}


def write_folder(docs: Path) -> None:
    for name, text in {**ORDINARY, **HOSTILE}.items():
        (docs / name).write_text(text)
    docx_bomb(docs / "zip.docx", 100)
    os.mkfifo(docs / "pipe.txt")


def test_hostile_files_fail_alone_and_the_rest_syncs(docs, make_config):
    write_folder(docs)
    config = make_config(sources=[{"name": "docs", "path": "./docs", "extract_timeout_seconds": 5}])
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "syncd", "resync", "--json", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.monotonic() - started
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    report = json.loads(out.stdout)
    reasons = {f["path"]: f["reason"] for f in report["failures"]}
    assert set(reasons) == {*HOSTILE, "zip.docx"}, reasons
    assert "nan" in reasons["nan.md"] and "inf" in reasons["inf.md"]
    assert "nested deeper" in reasons["deep.md"] and "more than" in reasons["bomb.md"]
    assert "stopped" in reasons["zip.docx"]
    assert report["added"] == len(ORDINARY)
    paths = {p["path"] for p in points(load_config(config)).values()}
    assert paths == set(ORDINARY)
    print(f"hostile resync: {seconds:.1f} s, peak RSS of any process {peak_mib:.0f} MiB")
    assert peak_mib < 1536


def test_the_daemon_stays_alive_and_ready_among_hostile_files(docs, make_daemon):
    write_folder(docs)
    daemon = make_daemon(sources=[{"name": "docs", "path": "./docs", "extract_timeout_seconds": 5}])
    daemon.start().wait_ready(timeout=120)
    status = daemon.status()
    assert {f["path"] for f in status["failed"]} == {*HOSTILE, "zip.docx"}
    (docs / "late.md").write_text("# Late\n\nWritten after the hostile files were found.\n")
    wait_until(lambda: "late.md" in daemon.paths("written after the hostile files"), 30, "late")
    assert get(daemon.url("/readyz"))[0] == 200
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.stderr
