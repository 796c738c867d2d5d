import asyncio
import io
import os
import resource
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import docx
import psutil
import pytest
from hostile import docx_bomb

from syncd.errors import DocumentError
from syncd.extract_pool import ExtractPool


def small_docx(text: str) -> bytes:
    out = io.BytesIO()
    doc = docx.Document()
    doc.add_paragraph(text)
    doc.save(out)
    return out.getvalue()


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> bytes:
    """98 KB-class .docx whose document.xml inflates to 100 MiB."""
    return docx_bomb(tmp_path_factory.mktemp("bomb") / "bomb.docx", 100).read_bytes()


def is_worker(process: psutil.Process) -> bool:
    try:
        return "spawn_main" in " ".join(process.cmdline())
    except psutil.Error:  # exited meanwhile
        return False


def run(coro):
    return asyncio.run(coro)


async def with_pool(body, **kw):
    pool = ExtractPool(**kw)
    try:
        return await body(pool)
    finally:
        pool.close()


def test_docx_is_extracted_in_a_worker_and_markdown_in_process():
    async def body(pool):
        md = await pool.extract("a.md", b"---\ntitle: T\n---\ntext", None, 5)
        assert pool._pool is None
        doc = await pool.extract("a.docx", small_docx("worker text"), None, 30)
        return md, doc

    md, doc = run(with_pool(body))
    assert (md.title, md.text) == ("T", "text")
    assert doc.text.strip() == "worker text"


def test_docx_bomb_is_killed_at_the_timeout_and_the_pool_goes_on(bomb):
    async def body(pool):
        with pytest.raises(DocumentError, match=r"extraction took longer than 1s \(stopped\)"):
            await pool.extract("bomb.docx", bomb, None, 1)
        return await pool.extract("after.docx", small_docx("after"), None, 30)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Room enough that only the clock can stop it (the memory cap has its own test).
    assert run(with_pool(body, memory_limit=2 << 30)).text.strip() == "after"
    # The parser's hundreds of MB stayed in the killed worker.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024


def test_docx_bomb_over_the_memory_limit_fails_with_the_reason(bomb):
    async def body(pool):
        with pytest.raises(DocumentError, match="memory"):
            await pool.extract("bomb.docx", bomb, None, 120)

    run(with_pool(body, memory_limit=150 << 20))


def test_text_longer_than_the_limit_is_refused():
    async def body(pool):
        with pytest.raises(DocumentError, match="extracted text longer than 100 characters"):
            await pool.extract("long.docx", small_docx("x" * 200), None, 30)

    run(with_pool(body, max_text_chars=100))


def test_close_kills_a_running_extraction_and_refuses_new_ones(bomb):
    async def body():
        pool = ExtractPool()
        running = asyncio.create_task(pool.extract("bomb.docx", bomb, None, 300))
        while not pool._running:
            await asyncio.sleep(0.05)
        workers = [c for c in psutil.Process().children() if is_worker(c)]
        pool.close()
        with pytest.raises(DocumentError, match="shutting down"):
            await running
        with pytest.raises(DocumentError, match="shutting down"):
            await pool.extract("a.docx", small_docx("late"), None, 30)
        return workers

    workers = run(body())
    assert workers
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]


def test_worker_dies_with_a_daemon_killed_by_sigkill(tmp_path):
    docx_bomb(tmp_path / "bomb.docx", 100, lean=True)
    script = textwrap.dedent(
        f"""
        import asyncio, psutil, sys
        from syncd.extract_pool import ExtractPool
        from test_extract_pool import is_worker

        def workers():
            return [c for c in psutil.Process().children() if is_worker(c)]

        def busy():  # parsing the bomb, past start-up
            return any(w.cpu_times().user > 1 for w in workers())

        async def main():
            pool = ExtractPool(workers=1)
            task = asyncio.create_task(
                pool.extract("bomb.docx", open({str(tmp_path / "bomb.docx")!r}, "rb").read(), None, 300)
            )
            while not busy():
                await asyncio.sleep(0.05)
            print(*[w.pid for w in workers()], flush=True)
            await task

        if __name__ == "__main__":
            asyncio.run(main())
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{os.getcwd()}:{Path(__file__).parent}"},
    ) as daemon:
        assert select.select([daemon.stdout], [], [], 120)[0], "no worker got busy"
        pids = [int(p) for p in daemon.stdout.readline().split()]
        assert pids
        daemon.send_signal(signal.SIGKILL)
    # Well before the bomb's parse (many seconds) would end and let the worker see EOF.
    _, alive = psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], 3)
    assert not alive
