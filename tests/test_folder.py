import os
import shutil
import socket
import threading

import pytest

from syncd.config import FolderSource
from syncd.errors import DocumentError
from syncd.sources.folder import read, scan


def source(root, **kw) -> FolderSource:
    return FolderSource(name="s", path=root, **kw)


def touch(root, rel, text="x"):
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_include_and_exclude_globs_with_posix_relative_paths(tmp_path):
    for rel in (
        "a.md",
        "d/b.md",
        "d/e/c.txt",
        "d/skip.bin",
        ".git/x.md",
        "d/.git/y.md",
        "drafts/z.md",
    ):
        touch(tmp_path, rel)
    found = scan(source(tmp_path, exclude=["**/.git/**", "drafts/**"])).files
    assert sorted(found) == ["a.md", "d/b.md", "d/e/c.txt"]
    assert found["a.md"].size == 1


def test_symlink_out_of_the_root_is_not_followed(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    touch(outside, "secret.md")
    touch(root, "in.md")
    os.symlink(outside, root / "link")
    os.symlink(outside / "secret.md", root / "file-link.md")
    assert sorted(scan(source(root)).files) == ["in.md"]


def test_symlink_loops_terminate_and_links_inside_the_root_are_followed(tmp_path):
    touch(tmp_path, "d/a.md")
    os.symlink(tmp_path, tmp_path / "d" / "loop")
    os.symlink(tmp_path / "d" / "a.md", tmp_path / "alias.md")
    assert sorted(scan(source(tmp_path)).files) == ["alias.md", "d/a.md"]


def test_suffix_fast_path_agrees_with_wcmatch():
    from wcmatch import glob

    from syncd.extract import DEFAULT_INCLUDE
    from syncd.sources.folder import Matcher

    matcher = Matcher([*DEFAULT_INCLUDE, "docs/*.special"], [])
    reference = glob.compile([*DEFAULT_INCLUDE, "docs/*.special"], flags=glob.GLOBSTAR)
    names = [
        "a.md",
        "x/y/a.md",
        ".h/a.md",
        "x/.h/a.md",
        ".a.md",
        "x/.a.md",
        "a.MD",
        "a.md.bak",
        "md",
        "x/a.tar.gz",
        "a.py",
        "a.",
        "dir.md/x",
        "x/y.z/a.txt",
        "a b.md",
        "ümlaut.md",
        "docs/x.special",
        "other/x.special",
    ]
    assert [matcher.included(n) for n in names] == [bool(reference.match(n)) for n in names]


@pytest.mark.parametrize(
    "exclude", [["**/.git/**"], ["drafts/**", "*.tmp"], ["**/**"], ["**"], ["a/**/b/**"]]
)
def test_listed_agrees_with_included_where_no_directory_is_pruned(exclude):
    from syncd.sources.folder import Matcher

    matcher = Matcher(["**/*.md", "**/*.tmp"], exclude)
    names = ["a.md", "x.tmp", "d/a.md", "drafts/a.md", "a/b/c.md", "a/x/b/c.md", ".git/a.md"]
    for name in names:
        parents = name.split("/")[:-1]
        if not any(matcher.prunes("/".join(parents[: i + 1])) for i in range(len(parents))):
            assert matcher.listed(name) == matcher.included(name), name


def test_inotify_limit_falls_back_to_polling_and_says_how_to_raise_it(tmp_path, monkeypatch):
    import errno
    import time

    import structlog
    import watchdog.observers
    from watchdog.observers.polling import PollingObserver

    from syncd.sources import folder

    class Exhausted(watchdog.observers.Observer):
        def schedule(self, *args, **kwargs):
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    # `watch` imports the observer when called (a one-shot resync never loads watchdog).
    monkeypatch.setattr(watchdog.observers, "Observer", Exhausted)
    hints = []
    with structlog.testing.capture_logs() as logs:
        observer = folder.watch(source(tmp_path), False, lambda s, p: hints.append(p))
    try:
        assert isinstance(observer, PollingObserver)
        (event,) = [e for e in logs if e["event"] == "inotify_limit_reached"]
        assert "max_user_watches" in event["fix"] and event["fallback"] == "polling"
        touch(tmp_path, "new.md")
        deadline = time.monotonic() + 10
        while "new.md" not in hints and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "new.md" in hints
    finally:
        observer.stop()
        observer.join()


def read_in_thread(src: FolderSource, rel: str) -> bytes | BaseException:
    """`read`'s result or exception; a read that blocks fails the test instead of hanging it."""
    out: list = []

    def run():
        try:
            out.append(read(src, rel))
        except BaseException as e:
            out.append(e)

    reader = threading.Thread(target=run, daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "read blocked"
    return out[0]


def test_read_returns_an_ordinary_file_and_one_linked_inside_the_root(tmp_path):
    touch(tmp_path, "d/a.md", "alpha")
    os.symlink(tmp_path / "d" / "a.md", tmp_path / "link.md")
    assert read(source(tmp_path), "d/a.md") == b"alpha"
    assert read(source(tmp_path), "link.md") == b"alpha"


def test_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.md")
    error = read_in_thread(source(tmp_path), "pipe.md")
    assert isinstance(error, DocumentError)
    assert str(error) == "not a regular file (FIFO)"


def test_socket_and_directory_are_refused(tmp_path):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock.md"))
        with pytest.raises(DocumentError, match=r"not a regular file \(socket\)"):
            read(source(tmp_path), "sock.md")
    (tmp_path / "dir.md").mkdir()
    with pytest.raises(DocumentError, match=r"not a regular file \(directory\)"):
        read(source(tmp_path), "dir.md")


def test_file_swapped_for_a_link_out_of_the_root_after_the_scan_is_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    touch(outside, "secret.md", "secret")
    touch(root, "note.md", "note")
    touch(root, "d/inner.md", "inner")
    assert sorted(scan(source(root)).files) == ["d/inner.md", "note.md"]
    (root / "note.md").unlink()
    os.symlink(outside / "secret.md", root / "note.md")
    shutil.rmtree(root / "d")
    os.symlink(outside, root / "d")
    touch(outside, "inner.md", "outside inner")
    for rel in ("note.md", "d/inner.md"):
        error = read_in_thread(source(root), rel)
        assert isinstance(error, DocumentError) and str(error) == "outside the source root"


def test_file_swapped_for_a_device_is_refused_without_opening_it(tmp_path):
    os.symlink("/dev/zero", tmp_path / "zero.md")
    with pytest.raises(DocumentError, match=r"not a regular file \(character device\)"):
        read(source(tmp_path), "zero.md")


def test_file_that_grew_past_max_file_bytes_since_the_scan_is_refused(tmp_path):
    touch(tmp_path, "big.txt", "x" * 101)
    with pytest.raises(DocumentError, match=r"larger than max_file_bytes \(100\)"):
        read(source(tmp_path, max_file_bytes=100), "big.txt")
    assert read(source(tmp_path, max_file_bytes=101), "big.txt") == b"x" * 101


def test_vanished_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read(source(tmp_path), "gone.md")
