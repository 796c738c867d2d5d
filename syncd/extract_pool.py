"""Extraction where it can be stopped: kreuzberg runs in child processes that are killed at
the document's timeout, have capped memory and die with syncd.

A thread cannot be stopped, so a timed-out extraction used to keep running (a 98 KB .docx
inflating to 100 MB kept a core and 900 MB busy for minutes, and delayed shutdown). pebble's
ProcessPool kills the worker of a task that runs past its timeout and starts another;
concurrent.futures' pool can only abandon a running task. Workers are reused (starting one,
an interpreter plus kreuzberg, takes a quarter of a second) and spawned rather than forked,
because the daemon runs threads. Plain text and Markdown, decoded in linear time with
bounded front matter, are extracted in-process, in a thread.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
from concurrent.futures import Future
from typing import TYPE_CHECKING

from syncd.children import die_with_parent
from syncd.errors import DocumentError
from syncd.extract import Extracted, extract, needs_worker

if TYPE_CHECKING:
    import pebble

# Per worker, beyond what it maps at start: two workers and syncd stay well under 1.5 GB.
DEFAULT_MEMORY_LIMIT = 512 << 20
# Text a worker may hand back: past this, a small compressed file is an inflation bomb
# more often than a book (32 M characters is some 10,000 pages).
DEFAULT_MAX_TEXT_CHARS = 32_000_000
# A fresh interpreter now and then returns what fragmentation or a leak in a parser kept.
_TASKS_PER_WORKER = 500


class ExtractPool:
    """`await pool.extract(...)` from the event loop; `pool.close()` on shutdown.

    Workers start on the first document that needs one; call `extract` from the event
    loop's thread, since a worker is told to die with the thread that started it.
    """

    def __init__(
        self,
        workers: int = 2,
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
        max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    ) -> None:
        self.workers = workers
        self.memory_limit = memory_limit
        self.max_text_chars = max_text_chars
        self._pool: pebble.ProcessPool | None = None
        self._running: set[Future[Extracted]] = set()
        self._closed = False

    async def extract(
        self, path: str, data: bytes, ocr_language: str | None, timeout: float
    ) -> Extracted:
        """Raise DocumentError with the reason (timeout, memory, a worker that died, the
        format's own errors) and UnsupportedFormat as `extract.extract` does.
        """
        if not needs_worker(path):
            return await asyncio.to_thread(extract, path, data, ocr_language)
        import pebble  # here: a reconcile with nothing to extract in a worker never loads it

        future = self._start().schedule(
            _extract_in_worker, (path, data, ocr_language, self.max_text_chars), timeout=timeout
        )
        self._running.add(future)
        future.add_done_callback(self._running.discard)
        try:
            return await asyncio.wrap_future(future)
        except DocumentError:
            raise
        except TimeoutError:
            raise DocumentError(f"extraction took longer than {timeout:g}s (stopped)") from None
        except MemoryError:
            raise DocumentError(self._over_memory()) from None
        except pebble.ProcessExpired as e:
            raise DocumentError(_death(e.exitcode, self._over_memory())) from None
        except Exception as e:  # anything the parser raised is this document's failure
            if self._closed:
                raise DocumentError("extraction stopped: shutting down") from None
            raise DocumentError(f"extraction failed: {type(e).__name__}: {e}") from None

    def close(self) -> None:
        """Kill the workers now, whatever they are doing; pending extractions fail."""
        self._closed = True
        if self._pool is not None:
            self._pool.stop()
            self._pool.join()
            self._pool = None
        # pebble leaves the futures of killed tasks pending; its threads are gone by now.
        for future in list(self._running):
            if not future.done():
                future.set_exception(DocumentError("extraction stopped: shutting down"))

    def _start(self) -> pebble.ProcessPool:
        from multiprocessing import get_context

        import pebble

        if self._closed:
            raise DocumentError("extraction stopped: shutting down")
        if self._pool is None:
            self._pool = pebble.ProcessPool(
                max_workers=self.workers,
                max_tasks=_TASKS_PER_WORKER,
                initializer=_start_worker,
                initargs=(self.memory_limit, os.getpid()),
                context=get_context("spawn"),
            )
        return self._pool

    def _over_memory(self) -> str:
        return f"extraction needed more than {self.memory_limit >> 20} MiB of memory (stopped)"


def _death(exitcode: int | None, over_memory: str) -> str:
    # Rust aborts (SIGABRT) when an allocation fails, which under our limit means memory.
    if exitcode == -signal.SIGABRT:
        return over_memory
    if exitcode is not None and exitcode < 0:
        return f"extraction worker died ({signal.Signals(-exitcode).name})"
    return f"extraction worker died (exit code {exitcode})"


def _start_worker(memory_limit: int, parent: int) -> None:
    # pebble's SIGTERM handler would wait for the parser to return to Python.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # So that a worker stuck in a parser does not outlive a daemon killed with -9.
    die_with_parent(parent)
    # kreuzberg maps its thread pools and allocator arenas on first use: count those as the
    # worker's baseline, so the limit is what one document may add.
    extract("warm-up.html", b"<p>warm-up</p>")
    limit = _address_space() + memory_limit
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _address_space() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def _extract_in_worker(
    path: str, data: bytes, ocr_language: str | None, max_text_chars: int
) -> Extracted:
    extracted = extract(path, data, ocr_language)
    if len(extracted.text) > max_text_chars:
        raise DocumentError(
            f"extracted text longer than {max_text_chars} characters"
            f" ({len(extracted.text)} from {len(data)} bytes)"
        )
    return extracted
