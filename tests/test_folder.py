import os

from syncd.config import FolderSource
from syncd.sources.folder import scan


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


def test_inotify_limit_falls_back_to_polling_and_says_how_to_raise_it(tmp_path, monkeypatch):
    import errno
    import time

    import structlog
    from watchdog.observers.polling import PollingObserver

    from syncd.sources import folder

    class Exhausted(folder.Observer):
        def schedule(self, *args, **kwargs):
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(folder, "Observer", Exhausted)
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
