"""What a sync did (Report, with typed failures) and how far it has come (Progress).

Shared by the engine that fills them, the CLI that prints them and the HTTP API that
carries a daemon's report to `syncd resync`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from syncd.state import SwitchProgress


@dataclass(frozen=True)
class Failure:
    source: str
    path: str
    reason: str
    #: The embedding API rejected its text: trying the same text again cannot help.
    rejected: bool = False


@dataclass
class Report:
    added: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    failed: int = 0
    skipped: int = 0
    texts_embedded: int = 0
    seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    #: Deletions held back by the mass-deletion guard (`--allow-delete` applies them).
    held: int = 0
    #: "source/dir: error" for what could not be listed; the documents under it are kept.
    unlisted: list[str] = field(default_factory=list)
    #: Source → why it looks unmounted (missing or empty root); nothing of it was deleted.
    unavailable: dict[str, str] = field(default_factory=dict)

    def merge(self, other: Report) -> None:
        for name in asdict(other):
            mine, theirs = getattr(self, name), getattr(other, name)
            setattr(self, name, mine | theirs if isinstance(mine, dict) else mine + theirs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        failures = [Failure(**f) for f in data.get("failures", [])]
        return cls(**{**data, "failures": failures})


@dataclass
class Progress:
    """Live counters for a progress display; the engine only increments them."""

    documents_total: int = 0
    documents_done: int = 0
    texts_embedded: int = 0
    listeners: list[Callable[[Progress], None]] = field(default_factory=list)

    def advance(self, documents: int = 0, texts: int = 0) -> None:
        self.documents_done += documents
        self.texts_embedded += texts
        for listener in self.listeners:
            listener(self)


@contextmanager
def shown(progress: Progress, enabled: bool) -> Iterator[None]:
    """A live bar on a terminal; periodic structured events otherwise."""
    if not enabled:
        yield
        return
    if sys.stderr.isatty():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.progress import (
            Progress as Bar,
        )

        with Bar(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[texts]} texts embedded"),
            TimeRemainingColumn(),
            transient=True,
        ) as bar:
            task = bar.add_task("documents", total=None, texts=0)
            progress.listeners.append(
                lambda p: bar.update(
                    task,
                    total=p.documents_total or None,
                    completed=p.documents_done,
                    texts=p.texts_embedded,
                )
            )
            yield
        return
    import structlog

    log = structlog.get_logger()
    last = [time.monotonic()]

    def every_five_seconds(p: Progress) -> None:
        if time.monotonic() - last[0] >= 5:
            last[0] = time.monotonic()
            log.info(
                "resync_progress",
                documents_done=p.documents_done,
                documents_total=p.documents_total,
                texts_embedded=p.texts_embedded,
            )

    progress.listeners.append(every_five_seconds)
    yield


def switch_status(progress: SwitchProgress | None) -> dict[str, Any] | None:
    """`status`'s view of the index being built for `embedder_next`: chunks done, and the
    time left at the average pace since the build started (None until it has a pace)."""
    if progress is None:
        return None
    done = min(progress.done, progress.total)
    eta = None
    if done and progress.started_at:
        elapsed = time.time() - progress.started_at
        eta = round((progress.total - done) * elapsed / done)
    return {
        "model": progress.model,
        "done": done,
        "total": progress.total,
        "eta_seconds": eta,
    }
