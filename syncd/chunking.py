"""Text → chunks, bounded by `max_chars`, cut where the text itself says so.

Greedy packing (fill each chunk, then start the next) moves every later boundary when
one paragraph grows, so one edit would re-embed the rest of the document. Here a chunk
ends after a paragraph when that paragraph's own hash says so, with a probability in
proportion to its length (content-defined chunking at paragraph granularity, as rsync
and restic do at byte granularity), or when the next paragraph would not fit. An edit
therefore changes the chunk it falls in and rarely more than one neighbour.

Paragraphs longer than a chunk are split at sentence and word boundaries by
semantic-text-splitter. Overlap repeats the end of the previous chunk at the start of
the next, cut at a word boundary.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from semantic_text_splitter import TextSplitter

_BLANK_LINES = re.compile(r"\n[ \t]*\n")
_HEADING = re.compile(r"#{1,6}\s")


@dataclass(frozen=True)
class Chunk:
    text: str
    hash: str
    #: 1-based page the chunk's own text starts on, for paged documents.
    page: int | None = None


def chunk_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chunk_text(
    text: str, max_chars: int, overlap_chars: int, markdown: bool = False, paged: bool = False
) -> list[Chunk]:
    """`paged`: pages are separated by form feeds; each chunk records its first page."""
    budget = max_chars - overlap_chars
    bodies = _pack(_paragraphs(text, budget, paged), budget, markdown)
    chunks = []
    for i, (body, page) in enumerate(bodies):
        if i and overlap_chars:
            tail = _tail(bodies[i - 1][0], overlap_chars)
            if tail:
                body = f"{tail}\n\n{body}"
        chunks.append(Chunk(body, chunk_hash(body), page))
    return chunks


def _paragraphs(text: str, budget: int, paged: bool) -> list[tuple[str, int | None]]:
    splitter = None
    out: list[tuple[str, int | None]] = []
    pages = text.split("\f") if paged else [text]
    for number, page in enumerate(pages, start=1):
        where = number if paged else None
        for block in _BLANK_LINES.split(page.replace("\r\n", "\n")):
            block = block.strip()
            if not block:
                continue
            if len(block) <= budget:
                out.append((block, where))
                continue
            splitter = splitter or TextSplitter(budget)
            out.extend((piece, where) for piece in splitter.chunks(block))
    return out


def _pack(
    paragraphs: list[tuple[str, int | None]], budget: int, markdown: bool
) -> list[tuple[str, int | None]]:
    """Paragraphs → (chunk body, page of its first paragraph)."""
    target = budget / 2
    chunks: list[tuple[str, int | None]] = []
    current: list[str] = []
    first_page: int | None = None
    size = 0
    for p, page in paragraphs:
        starts_section = markdown and _HEADING.match(p) is not None
        # A heading starts a chunk, unless the chunk so far is only headings above it.
        new_section = starts_section and not all(_HEADING.match(c) for c in current)
        # A new page starts a chunk too, so every chunk lies on the page it names.
        if current and (size + 2 + len(p) > budget or new_section or page != first_page):
            chunks.append(("\n\n".join(current), first_page))
            current, size = [], 0
        if not current:
            first_page = page
        current.append(p)
        size += len(p) + (2 if size else 0)
        if not starts_section and _ends_chunk(p, target):
            chunks.append(("\n\n".join(current), first_page))
            current, size = [], 0
    if current:
        chunks.append(("\n\n".join(current), first_page))
    return chunks


def _ends_chunk(paragraph: str, target: float) -> bool:
    digest = hashlib.blake2b(paragraph.encode("utf-8"), digest_size=4).digest()
    return int.from_bytes(digest) / 2**32 < len(paragraph) / target


def _tail(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    tail = text[-limit:]
    space = tail.find(" ")
    return tail[space + 1 :] if space >= 0 else ""
