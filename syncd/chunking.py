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


def chunk_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chunk_text(
    text: str, max_chars: int, overlap_chars: int, markdown: bool = False
) -> list[Chunk]:
    budget = max_chars - overlap_chars
    bodies = _pack(_paragraphs(text, budget), budget, markdown)
    chunks = []
    for i, body in enumerate(bodies):
        if i and overlap_chars:
            tail = _tail(bodies[i - 1], overlap_chars)
            if tail:
                body = f"{tail}\n\n{body}"
        chunks.append(Chunk(body, chunk_hash(body)))
    return chunks


def _paragraphs(text: str, budget: int) -> list[str]:
    splitter = None
    out: list[str] = []
    for block in _BLANK_LINES.split(text.replace("\r\n", "\n")):
        block = block.strip()
        if not block:
            continue
        if len(block) <= budget:
            out.append(block)
            continue
        splitter = splitter or TextSplitter(budget)
        out.extend(splitter.chunks(block))
    return out


def _pack(paragraphs: list[str], budget: int, markdown: bool) -> list[str]:
    target = budget / 2
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for p in paragraphs:
        starts_section = markdown and _HEADING.match(p) is not None
        # A heading starts a chunk, unless the chunk so far is only headings above it.
        new_section = starts_section and not all(_HEADING.match(c) for c in current)
        if current and (size + 2 + len(p) > budget or new_section):
            chunks.append("\n\n".join(current))
            current, size = [], 0
        current.append(p)
        size += len(p) + (2 if size else 0)
        if not starts_section and _ends_chunk(p, target):
            chunks.append("\n\n".join(current))
            current, size = [], 0
    if current:
        chunks.append("\n\n".join(current))
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
