"""Scan and watch a folder tree: which included files exist, with their size and mtime.

Scanning only calls `stat`; `read` is called by the engine, and only for files whose size
or mtime differ from what the state recorded.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import structlog
from wcmatch import glob

from syncd.config import FolderSource
from syncd.errors import DocumentError

if TYPE_CHECKING:  # watchdog is imported by `watch`: a one-shot resync never loads it
    from watchdog.events import FileSystemEvent
    from watchdog.observers.api import BaseObserver

log = structlog.get_logger()

# A directory is pruned when an exclude pattern matches any name inside it.
_ANY_CHILD = "\x00syncd-any-child"


class FileStat(NamedTuple):  # a tuple: a scan makes one per file
    size: int
    mtime_ns: int


class Matcher:
    """Include/exclude globs, as wcmatch reads them (`**` spans directories; names starting
    with a dot match only patterns that name the dot).

    Patterns of the form `**/*.ext` (the default include lists some sixty) become one set
    of suffixes: a set lookup per file instead of trying sixty regexes. A file in a
    directory `prunes` let through is tested against the exclude patterns not of the form
    `X/**` only (`listed`): those match a file only under a directory they match too, and
    trying them (the default exclude list is all such) was a quarter of a scan's time.
    """

    def __init__(self, include: list[str], exclude: list[str]) -> None:
        self._suffixes = {p[4:] for p in include if _BY_SUFFIX.fullmatch(p)}
        self._include = _one_regex([p for p in include if not _BY_SUFFIX.fullmatch(p)])
        self._exclude = _one_regex(exclude)
        self._exclude_files = _one_regex([p for p in exclude if not _under_directory(p)])

    def included(self, rel: str) -> bool:
        return self._wanted(rel) and not self.excluded(rel)

    def listed(self, rel: str) -> bool:
        """`included`, for a file none of whose directories `prunes`."""
        return self._wanted(rel) and self._exclude_files.match(rel) is None

    def excluded(self, rel: str) -> bool:
        return self._exclude.match(rel) is not None

    def prunes(self, rel_dir: str) -> bool:
        return self.excluded(f"{rel_dir}/{_ANY_CHILD}")

    def _wanted(self, rel: str) -> bool:
        return self._by_suffix(rel) or self._include.match(rel) is not None

    def _by_suffix(self, rel: str) -> bool:
        name = rel.rpartition("/")[2]
        dot = name.rfind(".")
        return (
            dot > 0 and name[dot:] in self._suffixes and not rel.startswith(".") and "/." not in rel
        )


_BY_SUFFIX = re.compile(r"\*\*/\*\.[A-Za-z0-9_+-]+")
_NOTHING = re.compile(r"(?!)")


def _under_directory(pattern: str) -> bool:
    """`X/**` where X needs a directory name (`**/**` also matches a file in the root)."""
    head, _, tail = pattern.rpartition("/")
    return tail == "**" and any(part not in ("", "**") for part in head.split("/"))


def _one_regex(patterns: list[str]) -> re.Pattern[str]:
    if not patterns:
        return _NOTHING
    regexes, _ = glob.translate(patterns, flags=glob.GLOBSTAR)
    return re.compile("|".join(f"(?:{r})" for r in regexes))


@dataclass
class Listing:
    """What a scan saw: included files, and what it could not look at.

    `unlisted` maps a relative directory (or file) that could not be listed or stat'ed
    to the error; "" is the root itself. Documents under them are unknown this scan,
    not gone: nothing under them may be deleted.
    """

    files: dict[str, FileStat] = field(default_factory=dict)
    unlisted: dict[str, str] = field(default_factory=dict)

    def covers(self, rel: str) -> bool:
        """Whether `rel` lies under something that could not be listed."""
        return any(d == "" or rel == d or rel.startswith(f"{d}/") for d in self.unlisted)


# These mean "not there", so a path with them is gone; any other OSError (EACCES, EIO,
# ESTALE, ...) means "cannot tell right now".
_ABSENT = (errno.ENOENT, errno.ENOTDIR)


def scan(source: FolderSource) -> Listing:
    """Every included regular file under the source root, with its size and mtime.

    Symlinks are followed only while they stay inside the root, and each real directory
    is visited once, so links out of the tree and link loops are skipped. A root that is
    missing or cannot be listed is reported as `unlisted[""]`.
    """
    root = source.path
    listing = Listing()
    real_root = root.resolve()
    matcher = Matcher(source.include, source.exclude)
    seen_dirs = {real_root}
    stack: list[tuple[Path, str]] = [(root, "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as e:
            listing.unlisted[prefix.rstrip("/")] = _reason(e)
            log.warning(
                "directory_unlisted", source=source.name, path=prefix or ".", error=_reason(e)
            )
            continue
        for entry in entries:
            rel = f"{prefix}{entry.name}"
            if not _printable(rel):
                log.warning("path_not_utf8_skipped", source=source.name, path=repr(rel))
                continue
            try:
                if entry.is_symlink() and not _inside(Path(entry.path), real_root):
                    continue
                if entry.is_dir():
                    real = Path(entry.path).resolve()
                    if real not in seen_dirs and not matcher.prunes(rel):
                        seen_dirs.add(real)
                        stack.append((Path(entry.path), f"{rel}/"))
                elif entry.is_file() and matcher.listed(rel):
                    st = entry.stat()
                    listing.files[rel] = FileStat(st.st_size, st.st_mtime_ns)
            except OSError as e:
                if e.errno not in _ABSENT:  # vanished since the listing: absent this scan
                    listing.unlisted[rel] = _reason(e)
    return listing


def stat_paths(source: FolderSource, paths: set[str]) -> Listing:
    """Those of `paths` that are included regular files inside the root now; a path that
    cannot be stat'ed for another reason than its absence is `unlisted`."""
    matcher = Matcher(source.include, source.exclude)
    real_root = source.path.resolve()
    listing = Listing()
    for rel in paths:
        parts = rel.split("/")
        if not matcher.listed(rel) or any(
            matcher.prunes("/".join(parts[:i])) for i in range(1, len(parts))
        ):
            continue
        path = source.path / rel
        try:
            st = path.stat()
        except OSError as e:
            if e.errno not in _ABSENT:
                listing.unlisted[rel] = _reason(e)
            continue
        if stat.S_ISREG(st.st_mode) and _inside(path, real_root):
            listing.files[rel] = FileStat(st.st_size, st.st_mtime_ns)
    return listing


def _reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


class _Events:
    """Runs in watchdog's thread; hands relative paths (None: the whole source) to `hint`.

    Watchdog only calls `dispatch`, so this needs no base class from it.
    """

    def __init__(self, source: FolderSource, hint: Callable[[str, str | None], None]) -> None:
        self.hint = hint
        self.source = source
        self.root = str(source.path.resolve())
        self.matcher = Matcher(source.include, source.exclude)

    def dispatch(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        paths = [event.src_path, getattr(event, "dest_path", "")]
        for raw in filter(None, paths):
            raw = os.fsdecode(raw)
            if not raw.startswith(self.root + os.sep):
                continue
            rel = raw[len(self.root) + 1 :].replace(os.sep, "/")
            if event.is_directory:
                # A moved or deleted tree sends one event for the whole tree.
                self.hint(self.source.name, None)
            elif self.matcher.included(rel):
                self.hint(self.source.name, rel)


def watch(
    source: FolderSource, polling: bool, hint: Callable[[str, str | None], None]
) -> BaseObserver:
    """Start a watchdog observer on the source; events become `hint(source, path)` calls."""
    from watchdog.observers import Observer
    from watchdog.observers.polling import PollingObserver

    handler = _Events(source, hint)
    observer = PollingObserver() if polling else Observer()
    try:
        observer.schedule(handler, str(source.path), recursive=True)
        observer.start()
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EMFILE):
            raise
        log.warning(
            "inotify_limit_reached",
            source=source.name,
            error=e.strerror,
            fix="sysctl fs.inotify.max_user_watches=524288 (and max_user_instances)",
            fallback="polling",
        )
        observer = PollingObserver()
        observer.schedule(handler, str(source.path), recursive=True)
        observer.start()
    return observer


def _inside(link: Path, real_root: Path) -> bool:
    try:
        return link.resolve(strict=True).is_relative_to(real_root)
    except (OSError, RuntimeError):  # dangling link or a loop of links
        return False


def _printable(rel: str) -> bool:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read(source: FolderSource, rel: str) -> bytes:
    """The bytes of a regular file inside the source root, checked on what was opened.

    The scan's checks are stale by the time a file is read: it may have been swapped for
    a FIFO (a plain open would block forever), a device, or a link out of the root. So
    the path is first opened with O_PATH, which neither blocks nor touches a device, and
    that handle is checked: a regular file, whose real path (links followed, as the scan
    follows those that stay inside) lies inside the root. The file is then read through
    the same handle, with O_NONBLOCK, and no further than max_file_bytes.

    Raise DocumentError ("not a regular file (FIFO)", "outside the source root", "larger
    than max_file_bytes"), FileNotFoundError when it is gone, OSError when unreadable.
    """
    handle = os.open(source.path / rel, os.O_PATH | os.O_CLOEXEC)
    try:
        kind = _kind(os.fstat(handle).st_mode)
        if kind != "regular file":
            raise DocumentError(f"not a regular file ({kind})")
        real = Path(os.readlink(f"/proc/self/fd/{handle}"))
        if not real.is_relative_to(source.path.resolve()):
            raise DocumentError("outside the source root")
        fd = os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    finally:
        os.close(handle)
    with open(fd, "rb") as f:
        data = f.read(source.max_file_bytes + 1)
    if len(data) > source.max_file_bytes:
        raise DocumentError(f"larger than max_file_bytes ({source.max_file_bytes}) when read")
    return data


_KINDS = {
    stat.S_IFREG: "regular file",
    stat.S_IFDIR: "directory",
    stat.S_IFIFO: "FIFO",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFLNK: "symbolic link",
}


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "special file")
