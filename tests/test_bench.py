"""The benchmark runs end to end at tiny sizes (its figures are for `python -m bench`)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_bench_runs_every_scenario_and_writes_json_and_plot(tmp_path):
    args = ["--quick", "--no-peer", "--scale", "200", "--out", str(tmp_path)]
    out = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    for name in (
        "pipeline_overhead",
        "pipeline_with_latency",
        "local_embedder",
        "noop_reconcile",
        "incremental",
        "freshness",
        "rate_limit",
        "redis_queue",
        "chunking",
        "memory",
        "startup",
        "migrate",
        "scale",
        "cpu_floor",
    ):
        assert results[name]["wall_seconds"] > 0, name
    assert results["incremental"]["texts_embedded"] >= 1
    assert results["rate_limit"]["max_in_60s_window"] <= results["rate_limit"]["limit_rpm"]
    assert results["redis_queue"]["ratio"] > 0
    floor = results["cpu_floor"]["pipeline"]
    assert floor["api_cpu_seconds"] > 0 and all(v > 0 for v in floor["us_per_chunk"].values())
    assert results["startup"]["version_cpu_seconds"] > 0
    assert results["migrate"]["to_parallel_4_points_per_s"] > 0
    assert (tmp_path / "results.png").stat().st_size > 0
    assert "no-op reconcile" in out.stdout
    assert results["scale"]["files"] == 200 and "scale: no-op resync, 200 files" in out.stdout
