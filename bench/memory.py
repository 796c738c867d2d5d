"""Issue 19: the footprint of the default set-up (local model, embedded store) as whole
processes, for this tree and for a baseline commit side by side in one run.

The baseline's `syncd` package is taken from git (`git archive`) into the work folder and
runs from there, so both sides see the same corpus, interpreter and machine load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

from bench.corpus import write_corpus
from bench.harness import PEAK_RSS_CLI, free_port, settings, status_mb, until
from bench.scenarios import corpus_chunks

ROOT = Path(__file__).resolve().parent.parent
# The commit before the local model was slimmed down (issue 19).
BASELINE = "de92439"

# The bare model on the same chunk texts for both trees (this tree's chunks, read from a
# JSON file), in batches of 200 as the engine sends them. The clock starts before the
# embedder module is imported: the baseline loads onnxruntime and its model there and in
# the constructor, this tree at the first embed, and each side's load counts once.
_BARE = (
    "import json, sys, time; from syncd import config; "
    "texts = json.load(open(sys.argv[1])); "
    "t = time.perf_counter(); c = time.process_time(); "
    "from syncd.embedders.local import LocalEmbedder; "
    # The baseline's tree names the settings model Embedder; this one EmbedderConfig.
    "m = LocalEmbedder((getattr(config, 'EmbedderConfig', None) or config.Embedder)()); "
    "[m.embed_sync(texts[i : i + 200]) for i in range(0, len(texts), 200)]; "
    "print(len(texts) / (time.perf_counter() - t), len(texts) / (time.process_time() - c))"
)


def _checkout(ref: str, into: Path) -> Path:
    """The `syncd` package as of `ref` (plus bench/, for the bare-model probe)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "syncd", "bench", "tests/fake_embed.py"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def _python(code: str, *args: str, tree: Path) -> subprocess.CompletedProcess[str]:
    # `-c` puts the working directory first on sys.path: the tree's own `syncd` wins.
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tree)},
    )


def _cli(tree: Path, config: Path, *args: str) -> tuple[float, float]:
    started = time.perf_counter()
    out = _python(PEAK_RSS_CLI, *args, "-c", str(config), tree=tree)
    return time.perf_counter() - started, int(out.stderr.strip().splitlines()[-1]) / 1024


def _daemon(tree: Path, config: Path, port: int, idle: float) -> dict[str, float]:
    """`syncd run` from a fresh state: peak RSS over its first sync, RSS after `idle` s."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd", "run", "-c", str(config)],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import urllib.request

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"syncd run exited {proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5):
                    return True
            except OSError:
                return False

        first_sync = until(ready, 1800, every=0.2)
        peak = status_mb(proc.pid, "VmHWM:")
        time.sleep(idle)
        return {
            "first_sync_seconds": first_sync,
            "first_sync_peak_rss_mb": peak,
            "idle_rss_mb": status_mb(proc.pid, "VmRSS:"),
            "idle_seconds": idle,
        }
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _side(tree: Path, work: Path, docs: Path, with_daemon: bool, idle: float) -> dict[str, Any]:
    root = work / "resync"
    settings(root, sources=[{"name": "docs", "path": str(docs)}])
    resync_s, resync_mb = _cli(tree, root / "config.yaml", "resync")
    search_s, search_mb = _cli(tree, root / "config.yaml", "search", "copper lantern harbour")
    out: dict[str, Any] = {
        "resync_seconds": resync_s,
        "resync_peak_rss_mb": resync_mb,
        "search_seconds": search_s,
        "search_peak_rss_mb": search_mb,
    }
    if with_daemon:
        port = free_port()
        settings(
            work / "run",
            sources=[{"name": "docs", "path": str(docs)}],
            server={"listen": f"127.0.0.1:{port}"},
        )
        out["run"] = _daemon(tree, work / "run" / "config.yaml", port, idle)
    return out


def memory(
    work: Path,
    files: int,
    texts: int,
    rounds: int = 3,
    baseline: str | None = BASELINE,
    with_daemon: bool = True,
    idle: float = 15.0,
) -> dict[str, Any]:
    """Peak RSS of resync, search and run; bare-model throughput (best of `rounds`,
    alternating sides so both see the same machine load)."""
    docs = work / "docs"
    write_corpus(docs, files, paragraphs=3, words=80)
    trees = {"after": ROOT}
    if baseline:
        trees["before"] = _checkout(baseline, work / "before-tree")
    out: dict[str, Any] = {"files": files, "baseline": baseline}
    chunks = work / "texts.json"
    chunks.write_text(json.dumps(corpus_chunks(docs)[:texts]))
    rates: dict[str, list[tuple[float, float]]] = {side: [] for side in trees}
    for _ in range(rounds):
        for side, tree in trees.items():
            line = _python(_BARE, str(chunks), tree=tree).stdout.split()
            rates[side].append((float(line[0]), float(line[1])))
    for side, tree in trees.items():
        out[side] = _side(tree, work / side, docs, with_daemon, idle)
        out[side]["bare_chunks_per_s"] = max(r for r, _ in rates[side])
        out[side]["bare_chunks_per_cpu_s"] = max(c for _, c in rates[side])
    if baseline:
        out["throughput_ratio"] = (
            out["after"]["bare_chunks_per_s"] / out["before"]["bare_chunks_per_s"]
        )
    return out
