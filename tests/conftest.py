"""Factories for real parts: config files under tmp_path, the local embedder, Qdrant Edge."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import qdrant_edge as qe
import yaml

from syncd.config import EmbedderConfig, Settings, load_config
from syncd.embedders import Kind
from syncd.embedders.local import LocalEmbedder
from syncd.engine import opened
from syncd.report import Report


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local model's graph cache, for this process and the syncd processes it starts:
    never the ~/.cache of whoever runs the suite."""
    import os

    path = tmp_path_factory.mktemp("cache")
    os.environ["XDG_CACHE_HOME"] = str(path)
    return path


@pytest.fixture(autouse=True)
def no_bm25_worker_left() -> Iterator[None]:
    """A test that wrote 256 chunks or more started the BM25 worker: it ends with the test,
    so the next one sees only the child processes it starts."""
    yield
    from syncd.store import bm25

    bm25.stop()


@pytest.fixture(autouse=True)
def no_store_process_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """The embedded store's process (syncd/store/process.py) ends as its store is closed,
    or with the syncd that started it: none that this test started outlives it."""
    yield
    left = _store_processes(f"PYTEST_CURRENT_TEST={request.node.nodeid} (".encode())
    deadline = time.monotonic() + 10
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [pid for pid in left if alive(pid)]
    assert not left, "a store process outlived its store"


def _store_processes(started_by: bytes) -> list[int]:
    """Those whose environment says which test they were started in (inherited, as pytest
    sets PYTEST_CURRENT_TEST), so that other work on the machine is left out."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (
                b"syncd.store.process" in (proc / "cmdline").read_bytes()
                and started_by in (proc / "environ").read_bytes()
                and alive(int(proc.name))
            ):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; init reaps it


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


class CountingEmbedder:
    """The real local model, counting the texts it is asked to embed."""

    def __init__(self, inner: LocalEmbedder) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.dimension = inner.dimension
        self.max_batch = inner.max_batch
        self.texts: list[str] = []
        self.requests = 0

    async def start(self) -> None:
        return None

    async def embed(self, texts: list[str], kind: Kind) -> np.ndarray:
        self.texts.extend(texts)
        self.requests += 1
        return await self.inner.embed(texts, kind)

    async def aclose(self) -> None:
        return None

    def reset(self) -> None:
        self.texts.clear()
        self.requests = 0


@pytest.fixture(scope="session")
def local_model() -> LocalEmbedder:
    return LocalEmbedder(EmbedderConfig())


@pytest.fixture
def embedder(local_model: LocalEmbedder) -> CountingEmbedder:
    return CountingEmbedder(local_model)


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    root.mkdir()
    return root


@pytest.fixture
def make_config(tmp_path: Path, docs: Path) -> Callable[..., Path]:
    """Write a config.yaml beside the docs folder; keyword sections override the defaults."""

    def make(**sections: Any) -> Path:
        data: dict[str, Any] = {
            "sources": [{"name": "docs", "path": "./docs"}],
            "server": {"listen": ""},
        }
        data.update(sections)
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return make


@pytest.fixture
def settings(make_config: Callable[..., Path]) -> Settings:
    return load_config(make_config())


@pytest.fixture
def resync(embedder: CountingEmbedder) -> Callable[..., Report]:
    """Run one in-process resync of every source with the counting embedder, opened as
    `syncd resync` opens it: the store only once a plan has work, if it is sealed."""

    def run(settings: Settings, force: bool = False) -> Report:
        async def go() -> Report:
            async with opened(
                settings, rebuild=force, embedder=embedder, build_next=True, lazy=True
            ) as engine:
                return await engine.resync(force=force)

        return asyncio.run(go())

    return run


def points(settings: Settings) -> dict[str, dict[str, Any]]:
    """Every point of the embedded collection, read with Qdrant Edge itself: id → payload."""
    shard = qe.EdgeShard.load(str(settings.qdrant.path / settings.qdrant.collection))
    try:
        out: dict[str, dict[str, Any]] = {}
        offset = None
        while True:
            records, offset = shard.scroll(
                qe.ScrollRequest(offset=offset, limit=1000, with_payload=True)
            )
            out.update((str(r.id), r.payload) for r in records)
            if offset is None:
                return out
    finally:
        shard.close()


@pytest.fixture
def redis_server(tmp_path: Path):
    from redis_server import RedisServer

    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fake_embed():
    """A fake AI21/OpenAI embedding API on a free loopback port."""
    from fake_embed import FakeEmbedAPI

    api = FakeEmbedAPI().start()
    yield api
    api.stop()


@pytest.fixture
def make_daemon(make_config, tmp_path: Path):
    """`make_daemon(**sections)`: a `syncd run` on a free port (not started), killed at the end."""
    from daemon_process import Daemon, free_port

    made = []

    def make(**sections: Any):
        port = free_port()
        defaults = {
            "watch": {"debounce_seconds": 0.2, "rescan_interval_seconds": 0},
            "server": {"listen": f"127.0.0.1:{port}"},
            "log": {"format": "json"},
        }
        made.append(Daemon(tmp_path, make_config(**(defaults | sections)), port))
        return made[-1]

    yield make
    for d in made:
        if d.proc and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
            d.close_pipes()


@pytest.fixture
def make_standin(tmp_path: Path):
    """`make_standin(api_key=None)`: a Qdrant server stand-in in its own process, started.

    See tests/qdrant_standin.py for what it is and is not; stopped at the end of the test.
    """
    from standin_process import StandinProcess

    made = []

    def make(api_key: str | None = None):
        made.append(StandinProcess(tmp_path / f"qdrant-server-{len(made)}", api_key).start())
        return made[-1]

    yield make
    for standin in made:
        standin.stop()
