"""The command line: parse, call the library, print text or --json. The only place that exits."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from syncd.errors import (
    BackendUnavailable,
    ConfigError,
    SourceUnavailable,
    StoreError,
    StoreLocked,
    StoreMismatch,
    SyncdError,
)
from syncd.store import MAX_LIMIT, MODES

# Everything heavier (pydantic, asyncio, structlog, numpy, the engine, the stores, the HTTP
# client) is imported by the code that uses it: `--version` answers from argparse alone and
# `status` without loading numpy, qdrant-client or the embedders.
if TYPE_CHECKING:
    from syncd.config import Settings
    from syncd.plan import Plan
    from syncd.report import Progress, Report

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BACKEND = 0, 1, 2, 3


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    from syncd.config import default_config_path, load_config

    args.config = args.config or default_config_path()
    try:
        settings = load_config(args.config)
        # structlog costs ~100 ms (it imports rich); `status` configures it only for Redis.
        if args.command is not status:
            from syncd.logs import configure_logging

            configure_logging(settings.log)
        return args.command(settings, args)
    except ConfigError as e:
        _error(
            str(e), e.hint or f"check {args.config}; config.yaml in the repo documents every key"
        )
        return EXIT_USAGE
    except (BackendUnavailable, StoreError) as e:
        _error(str(e), e.hint)
        return EXIT_BACKEND
    except SyncdError as e:
        _error(str(e), e.hint)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def _error(message: str, hint: str | None) -> None:
    print(f"Error: {message}", file=sys.stderr)
    if hint:
        print(f"Try: {hint}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        type=Path,
        help="config file (default: $SYNCD_CONFIG, else ./config.yaml)",
    )
    parser = argparse.ArgumentParser(
        prog="syncd",
        description="Keep a Qdrant collection an exact mirror of folders of documents.",
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser("run", parents=[common], help="the daemon: reconcile, then follow changes")
    p.set_defaults(command=run)

    p = sub.add_parser(
        "resync", parents=[common], help="reconcile the sources with Qdrant once and exit"
    )
    p.add_argument("--source", help="only this source")
    p.add_argument("--force", action="store_true", help="re-chunk and re-embed everything")
    p.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    p.add_argument(
        "--allow-delete",
        action="store_true",
        help="apply deletions held back by the mass-deletion guard or an empty source root",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(command=resync)

    p = sub.add_parser(
        "status", parents=[common], help="documents, chunks, pending and failures per source"
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(command=status)

    p = sub.add_parser("search", parents=[common], help="print the chunks nearest to a query")
    p.add_argument("query")
    p.add_argument(
        "--mode",
        choices=MODES,
        default="hybrid",
        help="hybrid: dense + BM25 fused with RRF (default); dense; keyword (BM25)",
    )
    p.add_argument("--limit", type=int, default=5, help=f"hits, 1 to {MAX_LIMIT} (default 5)")
    p.add_argument("--source", help="only this source")
    p.add_argument("--path", metavar="GLOB", help="only documents whose path matches GLOB")
    p.add_argument(
        "--where",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="only documents whose metadata has KEY equal to VALUE (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(command=search)

    p = sub.add_parser(
        "migrate",
        parents=[common],
        help="copy the embedded store to a Qdrant server (or back) without embedding anything",
    )
    direction = p.add_mutually_exclusive_group(required=True)
    direction.add_argument("--to", metavar="URL", help="copy the embedded store to this server")
    direction.add_argument(
        "--from", dest="from_url", metavar="URL", help="copy this server's collection here"
    )
    p.add_argument("--collection", help="the server's collection (default: qdrant.collection)")
    p.add_argument(
        "--api-key-file", type=Path, help="the server's API key (default: qdrant.api_key)"
    )
    p.add_argument("--batch-size", type=int, default=256, help="points per request (%(default)s)")
    p.add_argument(
        "--parallel",
        type=int,
        default=4,
        help="uploads in flight to a server (%(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(command=migrate)

    p = sub.add_parser(
        "mcp", parents=[common], help="an MCP server on stdio: search, get_document, list_sources"
    )
    p.set_defaults(command=mcp)

    p = sub.add_parser(
        "verify", parents=[common], help="audit every point against the state and the files"
    )
    p.add_argument("--source", help="only this source")
    p.add_argument("--repair", action="store_true", help="fix the drift found, from cached vectors")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(command=verify)
    return parser


class _Version(argparse.Action):
    """argparse's own version action wants the string up front, which costs the metadata lookup
    on every command."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from syncd import __version__

        print(f"syncd {__version__}")
        parser.exit()


# -- run --------------------------------------------------------------------------------------


def run(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from syncd import daemon
    from syncd.config import check_listen_safe

    check_listen_safe(settings)
    asyncio.run(daemon.run(settings))
    return EXIT_OK


# -- resync ---------------------------------------------------------------------------------


def resync(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from syncd.report import Progress, shown

    sources = [settings.source(args.source)] if args.source else settings.sources
    if args.dry_run:
        return _dry_run(settings, sources, args.json, args.allow_delete)
    progress = Progress()
    try:
        with shown(progress, enabled=not args.json):
            report = asyncio.run(
                _resync(settings, sources, args.force, progress, args.allow_delete)
            )
    except StoreLocked:
        if args.force or not settings.server.listen:
            raise
        from syncd.http import DaemonClient

        report = DaemonClient(settings.server).resync(args.source, args.allow_delete)
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print(
            f"added {report.added}, updated {report.updated}, deleted {report.deleted}, "
            f"unchanged {report.unchanged}, failed {report.failed}, skipped {report.skipped}; "
            f"{report.texts_embedded} texts embedded in {report.seconds:.1f}s"
        )
    for f in report.failures:
        print(f"failed: {f.source}/{f.path}: {f.reason}", file=sys.stderr)
    for u in report.unlisted:
        print(f"unlisted (its documents are kept): {u}", file=sys.stderr)
    if report.held:
        print(
            f"held back {report.held} deletions (more than a source's max_delete_fraction); "
            "review them with `syncd resync --dry-run`, apply them with "
            "`syncd resync --allow-delete`",
            file=sys.stderr,
        )
    if report.unavailable:
        raise SourceUnavailable(
            "; ".join(report.unavailable.values()),
            hint="mount the folder again, or confirm as above",
        )
    return EXIT_FAILED if report.failed or report.held or report.unlisted else EXIT_OK


async def _resync(
    settings: Settings, sources: list, force: bool, progress: Progress, allow_delete: bool
) -> Report:
    from syncd.engine import opened

    rebuild = force and len(sources) == len(settings.sources)
    async with opened(
        settings, rebuild=rebuild, progress=progress, build_next=True, lazy=True
    ) as engine:
        if engine.rebuilt:
            print(engine.rebuilt.describe(), file=sys.stderr)
        report = await engine.resync(sources, force, allow_delete=allow_delete)
        switch = engine.switch
        if switch is not None and await engine.build_next():
            print(
                f"switched to {switch.model} ({switch.texts_embedded} texts embedded for it); "
                "now move the embedder_next section of the config to embedder",
                file=sys.stderr,
            )
        return report


def _dry_run(settings: Settings, sources: list, as_json: bool, allow_delete: bool) -> int:
    import asyncio

    from syncd.config import FolderSource
    from syncd.engine import opened

    async def plan() -> list[Plan]:
        async with opened(settings, create=False, lazy=True) as engine:
            # A queue has no plan to show: its resync only re-checks the store.
            return [
                engine.plan(s, allow_delete=allow_delete)
                for s in sources
                if isinstance(s, FolderSource)
            ]

    plans = [p.summary() for p in asyncio.run(plan())]
    if as_json:
        print(json.dumps({"plans": plans}, indent=2))
        return EXIT_OK
    for p in plans:
        print(
            f"{p['source']}: {len(p['add'])} to add, {len(p['update'])} to update, "
            f"{len(p['delete'])} to delete, {p['unchanged']} unchanged"
        )
        for label in ("add", "update", "delete", "held"):
            for path in p[label]:
                print(f"  {label:<6} {path}")
        for directory, error in p["unlisted"].items():
            print(f"  unlisted {directory or '.'}: {error}")
    return EXIT_OK


# -- status ---------------------------------------------------------------------------------


def status(settings: Settings, args: argparse.Namespace) -> int:
    # SQLite (and Redis for queue sources) only, so it works beside a running `syncd run`.
    from syncd.config import RedisSource
    from syncd.report import switch_status
    from syncd.sources import state_status
    from syncd.state import State

    state = State(settings.state.path)
    try:
        rows = [state_status(state, s) for s in settings.sources]
        switch = switch_status(state.switch_progress())
    finally:
        state.close()
    queues = [
        (row, s)
        for row, s in zip(rows, settings.sources, strict=True)
        if isinstance(s, RedisSource)
    ]
    if queues:
        import asyncio

        from syncd.logs import configure_logging
        from syncd.sources import stream_status

        configure_logging(settings.log)  # the Redis client logs

        async def streams() -> None:
            for row, source in queues:
                row["stream"] = await stream_status(source)

        asyncio.run(streams())
    if args.json:
        print(json.dumps({"sources": rows, "embedder_switch": switch}, indent=2))
        return EXIT_OK
    if switch:
        eta = switch["eta_seconds"]
        left = f"about {eta // 60}m {eta % 60}s left" if eta is not None else "starting"
        print(
            f"embedder switch to {switch['model']}: {switch['done']} of {switch['total']} "
            f"chunks in the new index; {left}"
        )
    for r in rows:
        print(
            f"{r['name']}: {r['documents']} documents, {r['chunks']} chunks, {r['pending']} pending, "
            f"{len(r['failed'])} failed, {r['skipped']} skipped; last sync {r['last_sync'] or 'never'}"
        )
        if "stream" in r:
            q = r["stream"]
            print(
                f"  stream: {q['lag']} not yet delivered, {q['pending']} pending, {q['dead']} dead-lettered"
            )
        for f in r["failed"]:
            print(f"  failed {f['path']}: {f['reason']} (attempts: {f['attempts']})")
        for u in r["unlisted"]:
            print(f"  unlisted {u['path']}: {u['error']} (its documents are kept)")
        if r["held_deletions"]:
            print(
                f"  {len(r['held_deletions'])} deletions held; apply with "
                f"`syncd resync --source {r['name']} --allow-delete`"
            )
    return EXIT_OK


# -- search ---------------------------------------------------------------------------------


def search(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from syncd.engine import opened
    from syncd.http import DaemonClient, hits_json
    from syncd.store import SearchQuery, parse_where

    if args.source:
        settings.source(args.source)
    query = SearchQuery(
        args.query,
        mode=args.mode,
        limit=args.limit,
        source=args.source,
        path_glob=args.path,
        where=parse_where(args.where),
    )

    async def ask_store() -> dict[str, Any]:
        async with opened(settings, create=False) as engine:
            return hits_json(query.text, await engine.search(query))

    try:
        result = asyncio.run(ask_store())
    except StoreLocked:
        if not settings.server.listen:
            raise
        result = DaemonClient(settings.server).search(query)
    except (StoreError, StoreMismatch):
        if settings.embedder_next is None:
            raise
        # A daemon switching to embedder_next may have moved the server's alias between
        # this process choosing its embedder and asking: asked again, both are the new ones.
        result = asyncio.run(ask_store())
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    if not result["hits"]:
        print("no results (has `syncd resync` run?)")
    for h in result["hits"]:
        where = f"{h['source']}/{h['path']}  #{h['chunk_index']}"
        if h.get("page"):
            where += f"  p.{h['page']}"
        title = f"  {h['title']}" if h.get("title") else ""
        excerpt = " ".join(h["text"].split())[:200]
        print(f"{h['score']:.3f}  {where}{title}\n       {excerpt}")
    return EXIT_OK


# -- migrate --------------------------------------------------------------------------------


def migrate(settings: Settings, args: argparse.Namespace) -> int:
    from syncd import migrate as migration
    from syncd.credentials import read_secret_file

    if args.api_key_file:
        api_key = read_secret_file(args.api_key_file, "--api-key-file")
    elif settings.qdrant.api_key:
        api_key = settings.qdrant.api_key.get_secret_value()
    else:
        api_key = None
    direction, url = ("to", args.to) if args.to else ("from", args.from_url)
    report = migration.migrate(
        settings, direction, url, args.collection, api_key, args.batch_size, args.parallel
    )
    if args.json:
        print(json.dumps(asdict(report) | {"points_per_second": report.points_per_second}))
        return EXIT_OK
    resumed = f" (resumed after {report.resumed_from})" if report.resumed_from else ""
    print(
        f"copied {report.copied} points{resumed} {direction} {url} collection "
        f"{report.collection!r} in {report.seconds:.1f}s ({report.points_per_second:.0f} points/s); "
        f"verified the counts of {len(report.counts)} sources and {report.sampled} points"
    )
    print(migration.config_change(settings, report, with_key=api_key is not None))
    return EXIT_OK


# -- mcp ------------------------------------------------------------------------------------


def mcp(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from syncd import mcp  # the MCP SDK loads only for this command

    asyncio.run(mcp.serve_stdio(settings))
    return EXIT_OK


# -- verify ---------------------------------------------------------------------------------


def verify(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from syncd.engine import opened
    from syncd.verify import Audit, audit

    sources = [settings.source(args.source)] if args.source else settings.sources

    async def run() -> Audit:
        async with opened(settings, create=False) as engine:
            if engine.store is None:  # no collection yet: nothing can have drifted
                return Audit()
            return await audit(engine, sources, repair=args.repair)

    try:
        result = asyncio.run(run())
    except StoreLocked as e:
        e.hint = "`syncd run` repairs drift itself every watch.verify_interval_seconds"
        raise
    if args.json:
        print(json.dumps({**asdict(result), "clean": result.clean}, indent=2))
    else:
        counts = ", ".join(f"{n} {kind}" for kind, n in result.drift.items())
        print(
            f"{result.points} points checked: {counts}; {len(result.pending)} documents "
            f"pending{'; repaired' if result.repaired else ''} ({result.seconds:.1f}s)"
        )
        for d in result.listed:
            print(f"{d.kind}: {d.source}/{d.path}: {d.detail}", file=sys.stderr)
    return EXIT_OK if result.clean or args.repair else EXIT_FAILED
