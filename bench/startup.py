"""Whole processes: how soon the CLI answers, and a sync of a million files (`--scale`)."""

from __future__ import annotations

import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.corpus import write_corpus
from bench.harness import ai21_at, fake_api_process, process_env, settings, syncd
from bench.scenarios import walk


def timed(args: list[str], env: dict[str, str], runs: int) -> tuple[float, float]:
    """Median wall and CPU (user + system) seconds of `runs` runs, after one that warms the
    caches. CPU time is what a busy machine does not inflate."""
    wall, cpu = [], []
    for _ in range(runs + 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True, env=env)
        wall.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(wall[1:]), statistics.median(cpu[1:])


def startup(work: Path, runs: int) -> dict[str, Any]:
    """`syncd --version` and `syncd status` as processes, beside a bare `python -c pass`."""
    root = work / "startup"
    shutil.copytree(Path(__file__).resolve().parent.parent / "sample-docs", root / "docs")
    settings(root)
    env = process_env()
    cli = [sys.executable, "-m", "syncd"]
    config = ["-c", str(root / "config.yaml")]
    out: dict[str, Any] = {"runs": runs}
    for name, args in (
        ("python", [sys.executable, "-c", "pass"]),
        ("version", [*cli, "--version"]),
        ("status", [*cli, "status", *config]),
    ):
        out[f"{name}_seconds"], out[f"{name}_cpu_seconds"] = timed(args, env, runs)
    return out


def scale(work: Path, files: int) -> dict[str, Any]:
    """First sync of `files` one-paragraph files with the fake API (its own process), then
    a no-op resync, each a whole `syncd resync` process; peak RSS of each."""
    root = work / "scale"
    started = time.perf_counter()
    write_corpus(root / "docs", files, paragraphs=1, words=20)
    written = time.perf_counter() - started
    with fake_api_process(64) as (url, key):
        config = root / "config.yaml"
        settings(root, embedder=ai21_at(url, key, max_concurrency=2))
        first, first_rss = syncd("resync", config=config)
        noop, noop_rss = syncd("resync", config=config)
    started = time.perf_counter()
    walk(root / "docs")
    floor = time.perf_counter() - started
    return {
        "files": files,
        "write_corpus_seconds": written,
        "first_sync_seconds": first,
        "first_sync_files_per_s": files / first,
        "first_sync_peak_rss_mb": first_rss,
        "noop_seconds": noop,
        "noop_peak_rss_mb": noop_rss,
        "scandir_seconds": floor,
        "noop_to_scandir": noop / floor,
    }
