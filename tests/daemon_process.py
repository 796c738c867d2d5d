"""`syncd run` as a subprocess, and the small clocks and HTTP calls tests use with it."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds it took for `check` to hold; fails the test after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


class Daemon:
    def __init__(self, root: Path, config: Path, port: int) -> None:
        self.root, self.config, self.port = root, config, port
        self.proc: subprocess.Popen | None = None

    def start(self, max_open_files: int | None = None, **env: str) -> Daemon:
        def limit_files() -> None:
            if max_open_files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (max_open_files, max_open_files))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "syncd", "run", "-c", str(self.config)],
            env={**os.environ, **env},
            cwd=self.root,
            preexec_fn=limit_files,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self, timeout: float = 60) -> None:
        wait_until(lambda: get(self.url("/readyz"))[0] == 200, timeout, "daemon ready")

    def status(self) -> dict:
        out = subprocess.run(
            [sys.executable, "-m", "syncd", "status", "--json", "-c", str(self.config)],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout)["sources"][0]

    def paths(self, query: str, limit: int = 5) -> list[str]:
        status, body = get(self.url(f"/search?q={urllib.parse.quote(query)}&limit={limit}"))
        assert status == 200, body
        return [h["path"] for h in json.loads(body)["hits"]]

    def stop_with_log(self, timeout: float = 10) -> tuple[int, str]:
        """SIGTERM; the exit code and everything it logged to stderr."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        _, log = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, log

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
            #: What the daemon logged, for tests to read after it stopped.
            self.stderr = self.proc.stderr.read()
            return code
        finally:
            self.close_pipes()

    def close_pipes(self) -> None:
        if self.proc is not None:
            self.proc.stdout.close()
            self.proc.stderr.close()
