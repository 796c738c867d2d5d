"""`syncd run`: reconcile once, then follow folder events and queues, and rescan, until stopped.

Folder events are hints, not truth: they name paths to look at again once they have been
quiet for `watch.debounce_seconds`. The startup reconcile and the periodic rescan repair
whatever events missed (an overflowed inotify queue, changes made while syncd was down).
Queue sources are consumed by supervised tasks: one that stops on an error is logged,
turns /readyz to 503, and is started again with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import importlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from syncd import metrics
from syncd.config import FolderSource, RedisSource, Settings, parse_listen
from syncd.engine import Engine, opened
from syncd.errors import BackendUnavailable, ConfigError, SourceUnavailable, SyncdError
from syncd.http import HealthServer
from syncd.memory import trim_heap
from syncd.notify import Notifier
from syncd.plan import folder_plan
from syncd.report import Report
from syncd.sources import folder
from syncd.store import Hit, SearchQuery

if TYPE_CHECKING:
    from syncd.mcp import Endpoint, Response

log = structlog.get_logger()

T = TypeVar("T")

# A backend outage is retried with a growing pause, up to this.
MAX_BACKOFF_SECONDS = 60.0
# A source that looks unmounted is rescanned this often until it is back.
UNAVAILABLE_RETRY_SECONDS = 15.0
# A stream of changes that never goes quiet is still synced after this many debounces.
MAX_DEBOUNCES = 10
# Shutdown waits this long for in-flight work before giving up on it.
SHUTDOWN_GRACE_SECONDS = 8.0


class InstanceLock:
    """One `syncd run` per state file: a second one exits 2 instead of fighting over it."""

    def __init__(self, state_path: Path) -> None:
        self.path = state_path.with_name(state_path.name + ".lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise ConfigError(
                f"another `syncd run` already uses this state ({self.path} is locked)",
                hint="`syncd status` and `syncd search` work beside it; stop it to start another",
            ) from None

    def release(self) -> None:
        os.close(self._fd)


async def until_done(
    work: Callable[[], Awaitable[T]],
    stop: asyncio.Event,
    on_health: Callable[[bool], None] = lambda ok: None,
) -> T | None:
    """Run `work` until it succeeds and return its result (None if stopped first).

    Only an unavailable backend is waited out, with backoff; nothing is dropped meanwhile.
    Any other error is the caller's.
    """
    backoff = 1.0
    while not stop.is_set():
        try:
            result = await work()
        except BackendUnavailable as e:
            on_health(False)
            log.warning("backend_unavailable", error=str(e), retry_in=backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
        else:
            on_health(True)
            return result
    return None


class EngineLock:
    """An asyncio.Lock that counts who waits for it, so a holder that could go on for long
    (a queue source's batches while its stream stays busy) can give way."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self.waiting = 0

    async def __aenter__(self) -> None:
        self.waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self.waiting -= 1

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()


class Daemon:
    """Also the service the HTTP server talks to (`syncd.http.Service`)."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.loop = asyncio.get_running_loop()
        self.wake = asyncio.Event()
        # source → path → monotonic time of its last event; None as path: rescan the source.
        self.dirty: dict[str, dict[str | None, float]] = {s.name: {} for s in settings.sources}
        self.observers: list[folder.BaseObserver] = []
        self.started = False
        self.healthy = True
        #: Queue sources whose consumer is down (restarting with backoff).
        self.consumers_down: set[str] = set()
        #: Why folder sources look unmounted (nothing of them is deleted meanwhile).
        self.unavailable: dict[str, str] = {}
        # The engine applies one plan at a time: rescans, hints, queue batches, /resync,
        # and pages of a new embedder's index.
        self.busy = EngineLock()
        #: When the next page of a new embedder's index may be built, after a failure.
        self.next_build = 0.0
        self.build_backoff = 1.0

    # -- the service behind HTTP -------------------------------------------------------------

    def ready(self) -> bool:
        # A remote embedder retrying an outage has not failed the sync yet, but is down.
        embedder_down = self.engine.embedder.failing_since is not None
        return (
            self.started
            and self.healthy
            and not self.consumers_down
            and not self.unavailable
            and not embedder_down
        )

    def source_names(self) -> list[str]:
        return [s.name for s in self.settings.sources]

    async def search(self, query: SearchQuery) -> list[Hit]:
        return await self.engine.search(query)

    async def document(self, source: str, path: str) -> list[dict[str, Any]]:
        return await self.engine.document(source, path)

    async def sources(self) -> list[dict[str, Any]]:
        return await self.engine.sources()

    async def resync(
        self, names: list[str] | None = None, retry_failed: bool = True, allow_delete: bool = False
    ) -> Report:
        """Reconcile these sources (all by default) now; also what `POST /resync` runs."""
        sources = [s for s in self.settings.sources if not names or s.name in names]
        async with self.busy:
            report = await self.engine.resync(
                sources, retry_failed=retry_failed, allow_delete=allow_delete
            )
        for source in sources:
            self.unavailable.pop(source.name, None)
        self.unavailable.update(report.unavailable)
        return report

    async def observe(self) -> None:
        """Refresh the gauges SQLite knows, on the loop that owns the engine."""
        metrics.observe_state(self.engine.state, self.settings)

    # -- following ---------------------------------------------------------------------------

    def hint(self, source: str, path: str | None) -> None:
        """Thread-safe: note that a path (or the whole source) changed."""
        self.loop.call_soon_threadsafe(self._note, source, path)

    def _note(self, source: str, path: str | None) -> None:
        self.dirty[source][path] = time.monotonic()
        self.wake.set()

    async def run(self, stop: asyncio.Event, notifier: Notifier) -> None:
        # Watch before the first reconcile, so a change made while it runs (or just after
        # /readyz turns 200) is an event, not something only the next rescan finds.
        self._watch()
        await self._until_done(self._rescan, stop)
        if stop.is_set():
            return
        self.started = True
        notifier.ready()
        from syncd.consumer import consume  # only daemons with queue sources need Redis

        queues = [
            asyncio.ensure_future(consume(self, source, stop))
            for source in self.settings.sources
            if isinstance(source, RedisSource)
        ]
        try:
            await self._follow_folders(stop, notifier)
        finally:
            for task in queues:
                task.cancel()
            await asyncio.gather(*queues, return_exceptions=True)

    async def _until_done(self, work: Callable[[], Awaitable[T]], stop: asyncio.Event) -> T | None:
        """`until_done`, where an error that is not an outage skips this round: the next
        rescan or event tries again, and the daemon goes on."""
        try:
            return await until_done(work, stop, self._set_health)
        except SyncdError as e:
            log.error("work_failed", error=str(e), kind=type(e).__name__)
            return None

    def _set_health(self, ok: bool) -> None:
        self.healthy = ok

    async def _follow_folders(self, stop: asyncio.Event, notifier: Notifier) -> None:
        rescan = self.settings.watch.rescan_interval_seconds
        next_rescan = self._next_rescan(rescan)
        verify_every = self.settings.watch.verify_interval_seconds
        next_verify = time.monotonic() + verify_every if verify_every else float("inf")
        debounce = self.settings.watch.debounce_seconds
        worked = True  # the first reconcile, just before
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_rescan:
                await self._until_done(self._rescan, stop)
                next_rescan = self._next_rescan(rescan)
                worked = True
                continue
            if now >= next_verify:
                await self._until_done(self._verify, stop)
                next_verify = time.monotonic() + verify_every
                worked = True
                continue
            due = self._take_due(now, debounce)
            if due:
                await self._until_done(functools.partial(self._sync_hints, due), stop)
                worked = True
                continue
            if self.engine.switch is not None and now >= self.next_build:
                await self._build_next()
                worked = True
                continue
            building = [self.next_build - now] if self.engine.switch is not None else []
            wait = min(
                [
                    next_rescan - now,
                    next_verify - now,
                    *self._deadlines(debounce, now),
                    *building,
                    5.0,
                ]
            )
            notifier.status(self._summary())
            if worked and not self.busy.locked():
                # Idle now: what the last batch peaked at goes back to the OS, once.
                trim_heap()
                worked = False
            self.wake.clear()
            stop_task = asyncio.ensure_future(stop.wait())
            wake_task = asyncio.ensure_future(self.wake.wait())
            await asyncio.wait(
                {stop_task, wake_task}, timeout=max(wait, 0.01), return_when=asyncio.FIRST_COMPLETED
            )
            stop_task.cancel()
            wake_task.cancel()

    async def _build_next(self) -> None:
        """One page of the new embedder's index, between the daemon's other work; a failure
        (its API down or refusing a text) is tried again later, search is not affected."""
        try:
            async with self.busy:
                await self.engine.build_next(whole=False)
        except SyncdError as e:
            log.warning("switch_step_failed", error=str(e), retry_in=self.build_backoff)
            self.next_build = time.monotonic() + self.build_backoff
            self.build_backoff = min(self.build_backoff * 2, MAX_BACKOFF_SECONDS)
        else:
            self.build_backoff = 1.0

    def _next_rescan(self, interval: float) -> float:
        now = time.monotonic()
        if self.unavailable:
            return now + min(interval or UNAVAILABLE_RETRY_SECONDS, UNAVAILABLE_RETRY_SECONDS)
        return now + interval if interval else float("inf")

    def _deadlines(self, debounce: float, now: float) -> list[float]:
        return [self._due_at(paths, debounce) - now for paths in self.dirty.values() if paths]

    @staticmethod
    def _due_at(paths: dict[str | None, float], debounce: float) -> float:
        """A source's changes are taken together once it has been quiet for `debounce`, so
        a burst (a checkout, `rm -r`) is one plan and meets the mass-deletion guard whole;
        a source that never goes quiet is still taken after MAX_DEBOUNCES of them."""
        return min(max(paths.values()) + debounce, min(paths.values()) + MAX_DEBOUNCES * debounce)

    def _take_due(self, now: float, debounce: float) -> dict[str, set[str | None]]:
        due: dict[str, set[str | None]] = {}
        for source, paths in self.dirty.items():
            if paths and now >= self._due_at(paths, debounce):
                due[source] = set(paths)
                paths.clear()
        return due

    async def _rescan(self) -> Report:
        return await self.resync(retry_failed=False)

    async def _verify(self) -> None:
        from syncd.verify import audit

        async with self.busy:
            await audit(self.engine, self.settings.sources, repair=True)

    async def _sync_hints(self, due: dict[str, set[str | None]]) -> None:
        for source in self.settings.sources:
            paths = due.get(source.name)
            if not isinstance(source, FolderSource) or not paths:
                continue
            # A directory event means "look at the whole source again" (cheap: stat only).
            hinted = None if None in paths else set(paths)
            async with self.busy:
                try:
                    plan = folder_plan(
                        self.engine.state,
                        self.engine.store,
                        source,
                        paths=hinted,
                        retry_failed=False,
                    )
                except SourceUnavailable as e:
                    log.warning("source_unavailable", source=source.name, error=str(e))
                    self.unavailable[source.name] = str(e)
                    continue
                await self.engine.apply(plan)

    def _watch(self) -> None:
        for source in self.settings.sources:
            if isinstance(source, FolderSource):
                self.observers.append(folder.watch(source, self.settings.watch.polling, self.hint))

    def stop_watching(self) -> None:
        for observer in self.observers:
            observer.stop()
        for observer in self.observers:
            observer.join(timeout=5)

    def _summary(self) -> str:
        pending = sum(len(p) for p in self.dirty.values())
        return f"{'ready' if self.started else 'starting'}; {pending} changes waiting"


async def run(settings: Settings, handle_signals: bool = True) -> None:
    """The daemon's whole life: lock, open, serve health, reconcile and follow, drain, close.

    A first SIGTERM/SIGINT drains (bounded by SHUTDOWN_GRACE_SECONDS); a second one
    cancels everything at once, which the next run repairs like a crash.
    """
    lock = InstanceLock(settings.state.path)
    stop = asyncio.Event()
    notifier = Notifier()
    try:
        if handle_signals:
            _on_signals(stop, asyncio.current_task())
        # Unreachable at start-up (the embedder's first request, Qdrant): wait it out.
        await until_done(lambda: _serve(settings, stop, notifier), stop)
        log.info("stopped")
    finally:
        lock.release()


class McpOnDemand:
    """/mcp, with the MCP SDK (and pydantic: some 40 MB) loaded by its first request, in
    a thread, so a daemon that no agent asks carries none of it and the loop never waits
    for the import. Runs on the daemon's loop, as `Endpoint.handle` does; the SDK's
    session manager lives in a task of its own (anyio ends a task group only in the task
    that began it), which the daemon's exit stack ends."""

    def __init__(self, daemon: Daemon, host: str, stack: contextlib.AsyncExitStack) -> None:
        self._daemon, self._host, self._stack = daemon, host, stack
        self._endpoint: Endpoint | None = None
        self._starting = asyncio.Lock()
        self._done = asyncio.Event()

    async def handle(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> Response:
        if self._endpoint is None:
            async with self._starting:
                if self._endpoint is None:
                    self._endpoint = await self._start()
        return await self._endpoint.handle(method, target, headers, body)

    async def _start(self) -> Endpoint:
        mcp = await asyncio.to_thread(importlib.import_module, "syncd.mcp")
        ready: asyncio.Future[Endpoint] = asyncio.get_running_loop().create_future()

        async def serve() -> None:
            try:
                names = self._daemon.source_names()
                async with mcp.serving(self._daemon, names, self._host) as endpoint:
                    ready.set_result(endpoint)
                    await self._done.wait()
            except BaseException as e:
                if not ready.done():
                    ready.set_exception(e)
                raise

        task = asyncio.ensure_future(serve())

        async def stop() -> None:
            self._done.set()
            await task

        self._stack.push_async_callback(stop)
        return await ready


async def _serve(settings: Settings, stop: asyncio.Event, notifier: Notifier) -> None:
    async with (
        opened(settings, build_next=True) as engine,
        contextlib.AsyncExitStack() as serving,
    ):
        daemon = Daemon(settings, engine)
        server = None
        if settings.server.listen:
            host, _ = parse_listen(settings.server.listen)
            endpoint = McpOnDemand(daemon, host, serving)
            server = HealthServer.start(settings.server, daemon, endpoint)
        # The engine stops taking documents as soon as a signal arrives.
        stopping = asyncio.ensure_future(_relay(stop, engine.stopping))
        watchdog = asyncio.ensure_future(notifier.keep_alive())
        try:
            await _bounded(daemon.run(stop, notifier), stop)
        finally:
            notifier.stopping()
            watchdog.cancel()
            stopping.cancel()
            daemon.stop_watching()
            if server:
                server.stop()


async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


async def _bounded(work: Awaitable[None], stop: asyncio.Event) -> None:
    """Run `work`; once `stop` is set, give it SHUTDOWN_GRACE_SECONDS, then cancel it.

    Cancelling is safe at any point: the engine's write order makes a cut-off batch
    look like a crash, which the next run repairs without re-embedding.
    """
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not task.done():
        await asyncio.wait({task}, timeout=SHUTDOWN_GRACE_SECONDS)
    if not task.done():
        log.warning("shutdown_grace_exceeded", abandoned="in-flight batch")
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _on_signals(stop: asyncio.Event, main: asyncio.Task | None) -> None:
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            log.warning("second_signal_exiting_now")
            if main is not None:
                main.cancel()
            return
        log.info("stopping", grace_seconds=SHUTDOWN_GRACE_SECONDS)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
