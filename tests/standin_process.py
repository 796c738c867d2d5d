"""`python tests/qdrant_standin.py` as a child process, for fixtures and benchmarks."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from qdrant_client import QdrantClient
from qdrant_standin import API_KEY_VARIABLE

_SERVER = Path(__file__).with_name("qdrant_standin.py")


class StandinProcess:
    """The Qdrant server stand-in in its own process, restartable on its port and data."""

    def __init__(self, path: Path, api_key: str | None = None) -> None:
        self.path = Path(path)
        self.api_key = api_key
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.log = self.path.with_name(self.path.name + ".log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> StandinProcess:
        env = {k: v for k, v in os.environ.items() if k != API_KEY_VARIABLE}
        if self.api_key:
            env[API_KEY_VARIABLE] = self.api_key
        cmd = [sys.executable, str(_SERVER), "--path", str(self.path), "--port", str(self.port)]
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env
            )
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("http://"):
            self.kill()
            raise RuntimeError(f"the Qdrant stand-in did not start: {self.log.read_text()}")
        self.port = int(line.rsplit(":", 1)[1])
        return self

    def stop(self) -> None:
        """SIGTERM: the stand-in closes its storage and exits, like a Qdrant shutdown."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: a crash; local mode has committed every write it answered."""
        self._end(signal.SIGKILL)

    def _end(self, sig: int) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        self.proc.stdout.close()
        self.proc = None

    def client(self, **kwargs: Any) -> QdrantClient:
        return QdrantClient(url=self.url, prefer_grpc=False, **kwargs)
