"""What the scenarios share: config files, in-process syncs, the fake API, daemons, clocks."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from syncd.config import Settings, load_config
from syncd.engine import opened
from syncd.report import Report

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fake_embed import FakeEmbedAPI

__all__ = ["FakeEmbedAPI"]


def ai21(api: FakeEmbedAPI, **kw: Any) -> dict[str, Any]:
    return ai21_at(api.url, api.key, **kw)


def ai21_at(url: str, key: str, **kw: Any) -> dict[str, Any]:
    """The embedder section for a fake API at `url` (in this process or another)."""
    return {
        "provider": "ai21",
        "model": "bench",
        "base_url": url,
        "api_key": key,
        "requests_per_minute": 1_000_000,
        "batch_size": 200,
    } | kw


def settings(root: Path, sources: list[dict] | None = None, **sections: Any) -> Settings:
    root.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "sources": sources or [{"name": "docs", "path": "./docs"}],
        "server": {"listen": ""},
        "log": {"level": "warning"},
    }
    data.update(sections)
    (root / "config.yaml").write_text(yaml.safe_dump(data))
    return load_config(root / "config.yaml")


def sync(config: Settings, force: bool = False) -> tuple[Report, float]:
    """One resync in this process, opened as `syncd resync` opens it (the store only once
    a plan has work, and sealed as it closes, so a later no-op leaves it closed)."""

    async def go() -> Report:
        async with opened(config, build_next=True, lazy=True) as engine:
            return await engine.resync(force=force)

    started = time.perf_counter()
    report = asyncio.run(go())
    return report, time.perf_counter() - started


def process_env(**extra: str) -> dict[str, str]:
    """This environment, with bytecode cached as an installed package has it (outside the
    tree): without it every process would compile syncd's modules again."""
    cache = Path(tempfile.gettempdir()) / "syncd-bench-pycache"
    return os.environ | {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": str(cache)} | extra


# Runs the CLI, then prints its peak RSS in KB last on stderr: its own (VmHWM, not
# ru_maxrss, which Linux carries over from the forking parent) plus the largest of its
# children's, the embedded store's process (a bound on their sum at any one moment).
PEAK_RSS_CLI = (
    "import resource, sys; from syncd.cli import main; code = main(sys.argv[1:]); "
    "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]; "
    "kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss; "
    "print(int(hwm.split()[1]) + kids, file=sys.stderr); sys.exit(code)"
)


def syncd(*args: str, config: Path, env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run the CLI in a process of its own; (seconds, its peak RSS in MB, see PEAK_RSS_CLI)."""
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_CLI, *args, "-c", str(config)],
        check=True,
        capture_output=True,
        text=True,
        env=process_env(**(env or {})),
    )
    seconds = time.perf_counter() - started
    return seconds, int(out.stderr.strip().splitlines()[-1]) / 1024


@contextmanager
def fake_api_process(dimension: int, latency: float = 0.0):
    """The fake API in a process of its own, as a real API would be: (url, key)."""
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from fake_embed import FakeEmbedAPI; "
        f"api = FakeEmbedAPI(dimension={dimension}, latency={latency}).start(); "
        "print(api.url, flush=True); "
        "time.sleep(3600)"
    )
    tests = str(Path(__file__).resolve().parent.parent / "tests")
    proc = subprocess.Popen([sys.executable, "-c", code, tests], stdout=subprocess.PIPE, text=True)
    try:
        yield proc.stdout.readline().strip(), FakeEmbedAPI.key
    finally:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, method: str = "GET") -> Any:
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.load(r)


def top_path(port: int, query: str) -> str | None:
    try:
        hits = http_json(f"http://127.0.0.1:{port}/search?q={urllib.parse.quote(query)}&limit=1")[
            "hits"
        ]
    except OSError:
        return None
    return hits[0]["path"] if hits else None


@contextmanager
def daemon(config: Path, port: int):
    """`syncd run` until the block ends; fails loudly if it dies or is not ready in 5 min."""
    log = config.with_name("daemon.log")
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncd", "run", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"syncd run exited {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5):
                    return True
            except OSError:
                return False

        until(ready, 300, every=0.1)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a running process has used so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """The processes `pid` started (any of its threads), theirs, and so on."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # the thread or the child ended meanwhile
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def status_mb(pid: int, key: str, tree: bool = True) -> float:
    """A /proc/PID/status figure in MB (VmRSS, VmHWM), summed over the processes that
    `pid` started too with `tree` (for VmHWM a bound: each peaked at its own moment)."""
    total = 0
    for p in [pid, *(descendants(pid) if tree else [])]:
        try:
            lines = Path(f"/proc/{p}/status").read_text().splitlines()
        except OSError:
            continue
        total += next(int(line.split()[1]) for line in lines if line.startswith(key))
    return total / 1024


def until(check, timeout: float, every: float = 0.01) -> float:
    """Seconds until `check()` holds."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if check():
            return time.perf_counter() - started
        time.sleep(every)
    raise TimeoutError(f"not within {timeout}s")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]
