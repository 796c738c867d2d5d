"""`python -m bench [--quick] [--no-peer] [--scale [N]] [--out DIR]`: every scenario, a
table, JSON, plots.

Sizes default to what issue 7 asks (about 10 minutes on 2 cores); --quick shrinks them
for a smoke run. Needs the `bench` extra for the LangChain peer (or --no-peer). --scale
adds a first sync and a no-op resync of a million files (N to change the count).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from bench import floor, memory, scenarios, search
from bench.chunking import chunking
from bench.migrate import migrate_throughput
from bench.startup import scale, startup
from syncd.config import LogConfig
from syncd.logs import configure_logging


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    parser.add_argument("--no-peer", action="store_true", help="skip the LangChain comparison")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--only", help="comma-separated scenarios to re-run into the existing results"
    )
    parser.add_argument(
        "--scale",
        type=int,
        nargs="?",
        const=1_000_000,
        metavar="N",
        help="also sync N files (default a million) with the fake API; takes a while",
    )
    args = parser.parse_args()
    q = args.quick
    sizes = [100, 300] if q else [1_000, 10_000, 100_000]
    plan = {
        "pipeline_overhead": lambda w: scenarios.pipeline_overhead(
            w, 50 if q else 2_000, rounds=1 if q else 3
        ),
        "pipeline_with_latency": lambda w: scenarios.pipeline_overhead(
            w, 50 if q else 1_000, 0.15, rounds=1 if q else 3
        ),
        "startup": lambda w: startup(w, 3 if q else 10),
        "local_embedder": lambda w: scenarios.local_embedder(w, 5 if q else 60),
        "noop_reconcile": lambda w: scenarios.noop_reconcile(w, sizes),
        "incremental": lambda w: scenarios.incremental(w, sizes[-2]),
        "verify": lambda w: scenarios.verify(w, sizes[-1]),
        "freshness": lambda w: scenarios.freshness(w, 3 if q else 20),
        "rate_limit": lambda w: scenarios.rate_limit(3 if q else 25, rpm=600 if q else 60),
        "redis_queue": lambda w: scenarios.redis_queue(
            w, 100 if q else 5_000, 3 if q else 20, latency=0.02, rounds=1 if q else 5
        ),
        "cpu_floor": lambda w: {
            "pipeline": floor.pipeline_floor(w / "pipeline", 50 if q else 2_000),
            "queue": floor.queue_floor(w / "queue", 100 if q else 5_000),
        },
        "migrate": lambda w: migrate_throughput(w, 500 if q else 10_000),
        "chunking": lambda w: chunking(50 if q else 2_000, 40 if q else 400, not args.no_peer),
    }
    plan["memory"] = lambda w: memory.memory(
        w,
        100 if q else 1_500,
        50 if q else 600,
        rounds=1 if q else 3,
        # The side-by-side baseline comes from git history, which a quick run need not have.
        baseline=None if q else memory.BASELINE,
        with_daemon=not q,
    )
    plan["search_latency"] = lambda w: search.search_latency(w, 2_000 if q else 100_000)
    plan["bm25_cost"] = lambda w: search.bm25_cost(
        w, 500 if q else 10_000, 50 if q else 2_000, 1 if q else 11
    )
    if not q:  # needs the bench extra (ranx)
        plan["retrieval"] = lambda w: search.retrieval_quality(w)
    if args.scale:
        plan["scale"] = lambda w: scale(w, args.scale)
    if not args.no_peer:
        plan["peer_langchain"] = lambda w: scenarios.peer_langchain(w, 50 if q else 2_000)
    configure_logging(LogConfig(level="warning"))
    if args.only:
        plan = {name: plan[name] for name in args.only.split(",")}
    previous = args.out / "results.json"
    results: dict = json.loads(previous.read_text()) if args.only and previous.exists() else {}
    results |= {
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "quick": q,
    }
    with tempfile.TemporaryDirectory(prefix="syncd-bench-") as tmp:
        for name, run in plan.items():
            work = Path(tmp) / name
            work.mkdir()
            started = time.perf_counter()
            print(f"running {name} ...", flush=True)
            results[name] = run(work)
            results[name]["wall_seconds"] = time.perf_counter() - started
            # Saved after every scenario: a failure late in a long run keeps the rest.
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    try:
        print(table(results))
        plot(results, args.out / "results.png")
    except KeyError as e:  # `--only` into an --out that lacks the other scenarios
        print(f"no table or plot: scenario {e} has not run into {args.out}")
    print(f"\nwrote {args.out / 'results.json'}")


def floor_rows(f: dict) -> list[tuple[str, str, str, str]]:
    """What syncd must spend per chunk at least, against what the bare run leaves it."""
    names = {
        "client": "HTTP",
        "chunking": "chunk",
        "bm25": "BM25",
        "edge": "Edge",
        "state": "SQLite",
    }
    rows = []
    for what, label in (("pipeline", "pipeline, 0 ms"), ("queue", "queue, 20 ms")):
        x = f[what]
        parts = " + ".join(f"{names[k]} {v:.0f}" for k, v in x["us_per_chunk"].items())
        rows.append(
            (
                f"CPU floor per chunk, {label}",
                f"{parts} us = {x['floor_cpu_seconds']:.2f} s; "
                f"{x['budget_cpu_seconds']:.2f} s to spare",
                f"{x['best_ratio']:.2f}",
                f"best reachable on {x['cores']} cores; API {x['api_cpu_seconds']:.2f} s CPU",
            )
        )
    return rows


def search_rows(r: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    if "search_latency" in r:
        s = r["search_latency"]
        rows.append(
            (
                f"9 search latency, {s['chunks']:,} chunks",
                f"hybrid p50 {s['hybrid_p50_ms']:.1f} ms (p95 {s['hybrid_p95_ms']:.1f}); "
                f"dense {s['dense_p50_ms']:.1f}, keyword {s['keyword_p50_ms']:.1f}; "
                f"written and quantized in {s['load_seconds'] + s.get('optimize_seconds', 0):.0f} s",
                "",
                "target hybrid p50 <= 20 ms",
            )
        )
    if "bm25_cost" in r:
        b = r["bm25_cost"]
        pipeline_ms = 1000 / r["pipeline_overhead"]["syncd_chunks_per_s"]
        rows.append(
            (
                "9 BM25 per chunk vs pipeline per chunk",
                f"{b['bm25_ms_per_chunk']:.3f} vs {pipeline_ms:.3f} ms; store "
                f"+{b['store_growth']:.0%} on disk",
                f"{b['bm25_ms_per_chunk'] / pipeline_ms:.3f}",
                "",
            )
        )
        rows.append(
            (
                "9 pipeline at 0 ms, with BM25 vs without",
                f"{b['with_bm25_chunks_per_s']:,.0f} vs {b['without_bm25_chunks_per_s']:,.0f} "
                f"chunks/s (medians of {len(b['pipeline_chunks_per_s']['with'])} alternated)",
                f"{b['throughput_cost']:.3f}",
                "target cost <= 0.05",
            )
        )
    if "retrieval" in r:
        q = r["retrieval"]
        for mode in ("dense", "keyword", "hybrid"):
            m = q[mode]
            rows.append(
                (
                    f"9 Python FAQ retrieval, {mode}",
                    f"nDCG@10 {m['ndcg@10']:.3f}, recall@10 {m['recall@10']:.3f}, "
                    f"MRR@10 {m['mrr@10']:.3f}",
                    "",
                    f"{q['queries']} questions, {q['chunks']} chunks",
                )
            )
        if "hybrid_by_weight" in q:
            weights = ", ".join(f"{w} {v:.3f}" for w, v in q["hybrid_by_weight"].items())
            halves = "; ".join(
                f"{h.replace('_', ' ')}: dense {q[h]['dense']:.3f}, hybrid {q[h]['hybrid']:.3f}"
                for h in ("odd_files", "even_files")
            )
            rows.append(("9 FAQ hybrid nDCG@10 by dense:BM25 weight", weights, "", "default 3:1"))
            rows.append(
                (
                    "9 FAQ hybrid vs dense, nDCG@10",
                    halves,
                    f"p={q['hybrid_vs_dense_p']['ndcg@10']:.2f}",
                    "Fisher randomization test",
                )
            )
    return rows


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def table(r: dict) -> str:
    rows = []
    for key in ("pipeline_overhead", "pipeline_with_latency"):
        p = r[key]
        rows.append(
            (
                f"1 pipeline vs raw fake API, {p['latency'] * 1000:.0f} ms/request",
                f"{p['syncd_chunks_per_s']:.0f} vs {p['raw_chunks_per_s']:.0f} chunks/s"
                + (
                    f" (medians of {p['rounds']}; ratios {_spread(p['ratios'])})"
                    if p.get("rounds", 1) > 1
                    else ""
                ),
                f"{p['ratio']:.2f}",
                "target >= 0.9" if p["latency"] == 0 else "target >= 0.95",
            )
        )
    if "startup" in r:
        s = r["startup"]
        for what in ("version", "status"):
            rows.append(
                (
                    f"start-up: syncd {'--' * (what == 'version')}{what}",
                    f"{s[f'{what}_seconds']:.3f} s wall, {s[f'{what}_cpu_seconds']:.3f} s CPU",
                    "",
                    f"target <= 0.15 s; bare python {s['python_seconds']:.3f} s",
                )
            )
    lo = r["local_embedder"]
    rows.append(
        (
            "2 local model: sync vs bare",
            f"{lo['syncd_chunks_per_s']:.1f} vs {lo['bare_chunks_per_s']:.1f} chunks/s",
            f"{lo['ratio']:.2f}",
            "target >= 0.9",
        )
    )
    for row in r["noop_reconcile"]["rows"]:
        rows.append(
            (
                f"3 no-op reconcile, {row['files']:,} files",
                f"{row['noop_seconds']:.3f} s ({row['noop_files_per_s']:,.0f} files/s)",
                f"{row['ratio_to_scandir']:.2f}",
                f"of scandir+stat ({row['scandir_seconds']:.3f} s)",
            )
        )
    targets = {10_000: "target <= 0.5 s", 100_000: "target <= 2 s"}
    for row in r["noop_reconcile"]["rows"]:
        rows.append(
            (
                f"3 no-op resync as a process, {row['files']:,} files",
                f"{row['noop_cli_seconds']:.3f} s",
                "",
                targets.get(row["files"], "whole `syncd resync`"),
            )
        )
    inc = r["incremental"]
    rows.append(
        (
            f"4 edit 1% of {inc['files']:,}",
            f"{inc['texts_embedded']} texts, {inc['seconds']:.2f} s",
            "",
            f"{inc['edited']} files edited",
        )
    )
    v = r.get("verify")
    if v:
        rows.append(
            (
                f"verify {v['points']:,} points",
                f"{v['seconds']:.1f} s, peak {v['peak_rss_mb']:.0f} MB",
                "",
                f"target <= {v['target_seconds']} s",
            )
        )
    f = r["freshness"]
    rows.append(
        (
            "5 freshness (debounce 1 s)",
            f"p50 {f['p50']:.2f} s, p95 {f['p95']:.2f} s",
            "",
            "write -> searchable",
        )
    )
    for row in r["noop_reconcile"]["rows"][-1:]:
        rows.append(
            (
                f"7 peak RSS, {row['files']:,} files",
                f"first sync {row['first_sync_peak_rss_mb']:.0f} MB, "
                f"no-op {row['noop_cli_peak_rss_mb']:.0f} MB",
                "",
                "whole CLI process",
            )
        )
    rl = r["rate_limit"]
    rows.append(
        (
            "rate limit, deep queue",
            f"{rl['achieved_rpm']:.1f} of {rl['limit_rpm']} rpm",
            f"{rl['ratio']:.3f}",
            f"max {rl['max_in_60s_window']} in any 60 s",
        )
    )
    if "cpu_floor" in r:
        rows += floor_rows(r["cpu_floor"])
    q = r["redis_queue"]
    rows.append(
        (
            f"redis stream vs bare client, {q.get('latency', 0) * 1000:.0f} ms/request",
            f"{q['entries_per_s']:.0f} vs {q['bare_entries_per_s']:.0f} entries/s "
            f"(medians of {q['rounds']}; ratios {_spread(q['ratios'])}); "
            f"XADD->searchable p50 {q['latency_p50']:.2f} s, p95 {q['latency_p95']:.2f} s",
            f"{q['ratio']:.2f}",
            f"{q['entries']:,} entries; target >= 0.9; CPU: syncd "
            f"{q['daemon_cpu_seconds']:.2f} s, its store {q['store_cpu_seconds']:.2f} s",
        )
    )
    if "scale" in r:
        sc = r["scale"]
        rows.append(
            (
                f"scale: first sync, {sc['files']:,} files",
                f"{sc['first_sync_seconds']:.0f} s ({sc['first_sync_files_per_s']:,.0f} files/s), "
                f"peak {sc['first_sync_peak_rss_mb']:.0f} MB",
                "",
                "syncd + its store process; target < 2 GB",
            )
        )
        rows.append(
            (
                f"scale: no-op resync, {sc['files']:,} files",
                f"{sc['noop_seconds']:.1f} s, peak {sc['noop_peak_rss_mb']:.0f} MB",
                f"{sc['noop_to_scandir']:.1f}",
                f"x scandir+stat ({sc['scandir_seconds']:.1f} s)",
            )
        )
    if "migrate" in r:
        mg = r["migrate"]
        rows.append(
            (
                f"migrate {mg['points']:,} points to the stand-in",
                f"{mg['to_parallel_4_points_per_s']:.0f} points/s (1 upload: "
                f"{mg['to_parallel_1_points_per_s']:.0f}); back {mg['from_points_per_s']:.0f}",
                "",
                "stand-in serves one request at a time",
            )
        )
    for name, c in r.get("chunking", {}).get("rows", {}).items():
        rows.append(
            (
                f"chunking {name}",
                f"{c['chunks']} chunks, avg {c['avg_chars']:.0f} chars; re-embedded per edit "
                f"p50/p95 {c['edit_p50']}/{c['edit_p95']} (60-paragraph docs "
                f"{c['long_edit_p50']}/{c['long_edit_p95']})",
                f"{c['count_ratio_to_langchain']:.2f}" if "count_ratio_to_langchain" in c else "",
                "count vs LangChain",
            )
        )
    if "memory" in r:
        rows += memory_rows(r["memory"])
    rows += search_rows(r)
    if "peer_langchain" in r:
        peer = r["peer_langchain"]
        for step in ("first_sync", "noop", "edit_1pct"):
            s = peer[step]
            rows.append(
                (
                    f"6 vs LangChain index(): {step}",
                    f"syncd {s['syncd_seconds']:.2f} s / {s['syncd_texts']} texts; "
                    f"LangChain {s['langchain_seconds']:.2f} s / {s['langchain_texts']} texts",
                    f"{s['speedup']:.1f}x",
                    f"syncd+Edge {s['syncd_edge_seconds']:.2f} s",
                )
            )
    width = [max(len(str(c[i])) for c in rows) for i in range(4)]
    header = ("scenario", "measured", "ratio", "note")
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, width, strict=True))]
    lines.append("-|-".join("-" * w for w in width))
    lines += [" | ".join(str(c).ljust(w) for c, w in zip(row, width, strict=True)) for row in rows]
    return "\n".join(lines)


def memory_rows(m: dict) -> list[tuple[str, str, str, str]]:
    sides = [s for s in ("before", "after") if s in m]

    def both(key: str, fmt: str) -> str:
        return " -> ".join(fmt.format(m[s][key]) for s in sides)

    rows = [
        (
            f"8 peak RSS, resync of {m['files']:,} files, local model",
            both("resync_peak_rss_mb", "{:.0f} MB"),
            "",
            "target <= 400 MB",
        ),
        ("8 peak RSS, search", both("search_peak_rss_mb", "{:.0f} MB"), "", "target <= 250 MB"),
        (
            "8 local model, bare",
            both("bare_chunks_per_s", "{:.1f} chunks/s"),
            f"{m['throughput_ratio']:.2f}" if "throughput_ratio" in m else "",
            "target >= 0.95 of before",
        ),
    ]
    if "run" in m[sides[-1]]:
        rows.append(
            (
                "8 syncd run: first-sync peak / idle RSS",
                " -> ".join(
                    f"{m[s]['run']['first_sync_peak_rss_mb']:.0f} / "
                    f"{m[s]['run']['idle_rss_mb']:.0f} MB"
                    for s in sides
                ),
                "",
                "target <= 400 / 250 MB",
            )
        )
    return rows


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chunking = r.get("chunking", {}).get("rows", {})
    fig, (a, b, *c) = plt.subplots(1, 3 if chunking else 2, figsize=(16 if chunking else 11, 4))
    rows = r["noop_reconcile"]["rows"]
    files = [x["files"] for x in rows]
    a.loglog(files, [x["noop_seconds"] for x in rows], "o-", label="syncd no-op reconcile")
    a.loglog(files, [x["scandir_seconds"] for x in rows], "s--", label="os.scandir + stat")
    a.set_xlabel("files")
    a.set_ylabel("seconds")
    a.set_title("No-op reconcile")
    a.legend()
    b.hist(r["freshness"]["all"], bins=10)
    b.set_xlabel("seconds from write to searchable")
    b.set_title(f"Freshness under syncd run (debounce {r['freshness']['debounce_seconds']:g} s)")
    for ax in c:
        for name, row in chunking.items():
            ax.scatter(row["avg_chars"], row["long_edit_p95"], label=name)
        ax.set_xlabel("average chunk, characters")
        ax.set_ylabel("chunks re-embedded per edit, p95")
        ax.set_title("Chunking: fullness vs edit locality")
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
