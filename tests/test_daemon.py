"""`syncd run` as a real subprocess: events, crashes, signals, health and metrics."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import time

import pytest
from daemon_process import Daemon, get, wait_until
from test_engine import assert_mirrors

from syncd.config import load_config


@pytest.fixture
def daemon(make_daemon) -> Daemon:
    return make_daemon()


def test_changes_are_searchable_within_2_seconds(docs, daemon):
    (docs / "old.md").write_text("An old note about lighthouses on rocky coasts.\n")
    daemon.start().wait_ready()
    assert daemon.paths("lighthouses", 1) == ["old.md"]

    (docs / "new.md").write_text("A new note about penguins that live on sea ice.\n")
    took = wait_until(lambda: daemon.paths("penguins on sea ice", 1) == ["new.md"], 2, "new file")
    assert took < 2

    (docs / "new.md").write_text("Now the note is about volcanoes and lava flows.\n")
    wait_until(
        lambda: "lava" in get(daemon.url("/search?q=volcano+lava&limit=1"))[1], 2, "modified"
    )

    (docs / "old.md").rename(docs / "renamed.md")
    wait_until(lambda: daemon.paths("lighthouses", 1) == ["renamed.md"], 2, "renamed")

    (docs / "new.md").unlink()
    wait_until(lambda: "new.md" not in daemon.paths("volcanoes", 5), 2, "deleted")

    assert daemon.stop() == 0
    assert_mirrors(load_config(daemon.config))


def test_burst_of_1000_files_all_arrive(docs, daemon):
    daemon.start().wait_ready()
    for i in range(1000):
        (docs / f"burst-{i:04}.txt").write_text(f"Burst note {i} about item {i * 13}.\n")
    wait_until(lambda: daemon.status()["documents"] == 1000, 60, "1000 documents")
    assert daemon.stop() == 0
    assert_mirrors(load_config(daemon.config))


def test_change_made_while_down_is_picked_up_at_start(docs, daemon, tmp_path):
    (docs / "a.md").write_text("Alpha note.\n")
    daemon.start().wait_ready()
    assert daemon.stop() == 0
    (docs / "a.md").unlink()
    (docs / "b.md").write_text("Beta note written while syncd was down.\n")
    daemon.start().wait_ready()
    assert daemon.status()["documents"] == 1
    assert daemon.stop() == 0
    assert_mirrors(load_config(daemon.config))


def test_health_metrics_status_and_second_instance(docs, daemon):
    (docs / "a.md").write_text("Alpha note.\n")
    (docs / "bad.txt").write_bytes(b"\x00\x01")
    daemon.start().wait_ready()
    assert get(daemon.url("/livez"))[0] == 200
    status, body = get(daemon.url("/metrics"))
    assert status == 200
    for name in (
        "syncd_documents_synced_total",
        "syncd_chunks_embedded_total",
        "syncd_pending_documents",
        "syncd_failed_documents",
        "syncd_sync_lag_seconds",
        "syncd_embed_request_seconds",
    ):
        assert name in body
    assert 'syncd_failed_documents{source="docs"} 1.0' in body
    s = daemon.status()
    assert (s["documents"], [f["path"] for f in s["failed"]]) == (1, ["bad.txt"])
    second = subprocess.run(
        [sys.executable, "-m", "syncd", "run", "-c", str(daemon.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 2 and "already uses this state" in second.stderr
    search = subprocess.run(
        [sys.executable, "-m", "syncd", "search", "alpha", "--json", "-c", str(daemon.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert search.returncode == 0, search.stderr
    assert json.loads(search.stdout)["hits"][0]["path"] == "a.md"
    (docs / "c.md").write_text("Gamma note, seen by the resync the daemon runs for us.\n")
    resync = subprocess.run(
        [sys.executable, "-m", "syncd", "resync", "--json", "-c", str(daemon.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert resync.returncode == 1, resync.stderr  # bad.txt still fails
    assert json.loads(resync.stdout)["added"] in (0, 1)  # the watcher may have been first
    assert daemon.status()["documents"] == 2
    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10


def test_systemd_notify_protocol(docs, daemon, tmp_path):
    (docs / "a.md").write_text("Alpha note.\n")
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(60)
    daemon.start(NOTIFY_SOCKET=address, WATCHDOG_USEC="400000")
    messages: list[str] = []
    while "READY=1" not in messages:
        messages.append(sock.recv(4096).decode())
    assert daemon.status()["documents"] == 1  # READY=1 comes after the first reconcile
    while sum(m == "WATCHDOG=1" for m in messages) < 3:
        messages.append(sock.recv(4096).decode())
    assert daemon.stop() == 0
    while "STOPPING=1" not in messages:
        messages.append(sock.recv(4096).decode())
    assert any(m.startswith("STATUS=") for m in messages)
    sock.close()


def test_kill_9_at_random_moments_then_a_final_run_converges(docs, daemon):
    rng = random.Random(42)
    for i in range(2000):
        (docs / f"d{i % 20}" / f"n{i}.txt").parent.mkdir(exist_ok=True)
        (docs / f"d{i % 20}" / f"n{i}.txt").write_text(
            f"Note {i}: item {i} is {rng.choice(['red', 'blue', 'green'])}.\n"
        )
    for _ in range(5):
        daemon.start()
        time.sleep(rng.uniform(1.0, 4.0))
        daemon.stop(signal.SIGKILL)
        # Edit between crashes, as users do.
        victim = docs / f"d{rng.randrange(20)}" / f"n{rng.randrange(2000)}.txt"
        if victim.exists():
            victim.unlink() if rng.random() < 0.5 else victim.write_text(
                "Rewritten after a crash.\n"
            )
    daemon.start().wait_ready(timeout=120)
    assert daemon.stop() == 0
    assert_mirrors(load_config(daemon.config))


def test_embedder_outage_of_20_seconds_delays_but_loses_nothing(docs, make_daemon, fake_embed):
    daemon = make_daemon(
        embedder=fake_embed.embedder(requests_per_minute=6000),
    )
    (docs / "before.txt").write_text("Written before the outage.\n")
    daemon.start().wait_ready()
    try:
        fake_embed.outage = 503
        for i in range(50):
            (docs / f"during-{i:02}.txt").write_text(f"Note {i} written during the outage.\n")
        wait_until(lambda: get(daemon.url("/readyz"))[0] == 503, 10, "readyz 503 during the outage")
        time.sleep(20)
        assert daemon.status()["documents"] == 1  # nothing marked done while the API is down
        fake_embed.outage = None
        wait_until(lambda: daemon.status()["documents"] == 51, 60, "all synced after recovery")
        wait_until(lambda: get(daemon.url("/readyz"))[0] == 200, 10, "ready again")
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    assert_mirrors(load_config(daemon.config))
    assert any(r.status == 503 for r in fake_embed.log)
