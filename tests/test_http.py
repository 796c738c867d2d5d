"""The daemon's HTTP surface as an attacker or a careless client meets it: real
`syncd run` processes on loopback, real sockets."""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from urllib.error import HTTPError

import pytest
from daemon_process import get, wait_until

TOKEN = "s3cret-token-for-tests"


def request(url: str, token: str | None = None, method: str = "GET") -> tuple[int, dict | str]:
    req = urllib.request.Request(url, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read().decode()
            status = r.status
    except HTTPError as e:
        body, status = e.read().decode(), e.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


@pytest.fixture
def guarded(docs, make_daemon):
    (docs / "bread.md").write_text("# Bread\n\nFeed the sourdough starter every day.\n")
    daemon = make_daemon()
    listen = f"127.0.0.1:{daemon.port}"
    daemon.config.write_text(
        daemon.config.read_text().replace(
            f"listen: {listen}", f"listen: {listen}\n  token: {TOKEN}"
        )
    )
    daemon.start().wait_ready()
    yield daemon
    assert daemon.stop() == 0


def test_every_endpoint_but_the_probes_wants_the_token(guarded):
    assert get(guarded.url("/livez"))[0] == 200
    assert get(guarded.url("/readyz"))[0] == 200
    for path, method in (("/search?q=bread", "GET"), ("/metrics", "GET"), ("/resync", "POST")):
        status, body = request(guarded.url(path), method=method)
        assert status == 401 and "token" in body["error"], (path, body)
        assert request(guarded.url(path), token="wrong", method=method)[0] == 401
    status, body = request(guarded.url("/search?q=sourdough"), token=TOKEN)
    assert status == 200 and body["hits"][0]["path"] == "bread.md"


def test_bad_parameters_get_400_with_a_json_error_and_the_daemon_goes_on(guarded):
    for query, word in (
        ("q=bread&limit=-1", "limit"),
        ("q=bread&limit=101", "limit"),
        ("q=bread&limit=many", "limit"),
        ("q=bread&mode=nope", "mode"),
        ("limit=3", "q"),
        ("q=bread&where=novalue", "KEY=VALUE"),
    ):
        status, body = request(guarded.url(f"/search?{query}"), token=TOKEN)
        assert status == 400 and word in body["error"], (query, body)
    status, body = request(guarded.url("/resync?source=nope"), token=TOKEN, method="POST")
    assert status == 404 and "nope" in body["error"]
    assert request(guarded.url("/search?q=bread&limit=1"), token=TOKEN)[0] == 200


def test_a_client_that_drops_mid_request_leaves_no_traceback(guarded):
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", guarded.port)) as s:
            s.sendall(b"GET /search?q=bread HTTP/1.1\r\nAuthorization: Bearer " + TOKEN.encode())
    assert request(guarded.url("/search?q=bread"), token=TOKEN)[0] == 200
    assert guarded.stop() == 0
    assert "Traceback" not in guarded.stderr
    guarded.start().wait_ready()


def test_search_through_the_cli_sends_the_token(guarded):
    out = subprocess.run(
        [sys.executable, "-m", "syncd", "search", "sourdough", "--json", "-c", str(guarded.config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["hits"][0]["path"] == "bread.md"


def test_idle_connections_cannot_starve_the_daemon(docs, make_daemon):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1400:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    daemon = make_daemon()
    daemon.start(max_open_files=1024).wait_ready()
    idle = []
    try:
        for _ in range(1100):
            s = socket.socket()
            s.settimeout(10)
            s.connect(("127.0.0.1", daemon.port))
            idle.append(s)
        started = time.monotonic()
        status, _ = get(daemon.url("/livez"))
        assert status == 200 and time.monotonic() - started < 2.0
        (docs / "late.md").write_text("# Late\n\nA file written while 1,100 sockets idle.\n")
        wait_until(lambda: "late.md" in daemon.paths("written while sockets idle"), 30, "synced")
    finally:
        for s in idle:
            s.close()
    assert daemon.stop() == 0
    assert "Too many open files" not in daemon.stderr
