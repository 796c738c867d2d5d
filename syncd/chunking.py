"""Text → chunks, bounded by `max_chars`, cut where the text itself says so.

Greedy packing (fill each chunk, then start the next) moves every later boundary when
one paragraph grows, so one edit would re-embed the rest of the document. Content-defined
chunking (cut where a boundary's own hash says so, as rsync and restic do for bytes)
keeps edits local, but alone it leaves chunks half full, and its cures (FastCDC's minimum
size and normalised cut points) make each cut depend on where the chunk started, so after
an edit the chunking rarely falls back into step when chunks must be nearly full. Here:

- The cut points are the text's own boundaries, ranked: paragraph break, line break,
  sentence end, space (a hard cut only inside a run with none), then by a hash of the
  text right after the boundary.
- Anchors: a boundary that outranks every other boundary within `anchor_radius` chunk
  lengths on either side. Whether a boundary is an anchor depends on that stretch of text
  alone, never on where a chunk started, so an edit moves only the anchors near it.
  Anchors (and Markdown headings) split the text into segments.
- Each segment gets the fewest chunks that hold it, and each cut is the best-ranked
  boundary among those that still let the rest of the segment fit. The slack this leaves
  lets most cuts stay put when an edit grows or shrinks the text around them.

So chunks are nearly as full as greedy packing makes them, an edit re-chunks the segment
it falls in (a few chunks) and leaves the others alone. Every chunk's text, overlap
included, is at most `max_chars` characters. Overlap repeats the end of the previous
chunk's last paragraph and never crosses a page break: a chunk's `page` is the page its
text starts on. One pass over the text, plus a sliding-window maximum: linear time.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

_SEPARATOR = "\n\n"
# CJK full stop, exclamation, question mark, semicolon: boundaries with no space after.
_CJK_STOPS = "\u3002\uff01\uff1f\uff1b"
_SENTENCE_END = frozenset(".!?\u2026\"')]\u201d\u2019" + _CJK_STOPS)
_HEADING = re.compile(r"#{1,6}\s")
_HEADINGS_ONLY = re.compile(r"(?:#{1,6}[ \t][^\n]*\s*)+")
#: Strengths of boundaries; a rank is a strength plus a hash in [0, 1).
_AFTER_HEADING, _WORD, _SENTENCE, _LINE, _PARAGRAPH = range(-1, 4)


@dataclass(frozen=True)
class Chunk:
    text: str
    hash: str
    #: 1-based page the chunk's own text starts on, for paged documents.
    page: int | None = None


@dataclass(frozen=True)
class Cutting:
    """How far apart anchors are, in `max_chars`: farther is fuller, nearer more local."""

    anchor_radius: float = 0.8


DEFAULT_CUTTING = Cutting()


def chunk_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chunk_text(
    text: str,
    max_chars: int,
    overlap_chars: int,
    markdown: bool = False,
    paged: bool = False,
    cutting: Cutting = DEFAULT_CUTTING,
) -> list[Chunk]:
    """`paged`: pages are separated by form feeds; each chunk records its first page."""
    text = text.replace("\r\n", "\n")
    # The chunk's own text needs room, however long the overlap in front of it.
    overlap = min(overlap_chars, max(0, max_chars // 2 - len(_SEPARATOR)))
    radius = max(1, round(cutting.anchor_radius * max_chars))
    chunks: list[Chunk] = []
    pages = text.split("\f") if paged else [text]
    for number, page in enumerate(pages, start=1):
        if len(page) <= max_chars and not (markdown and "#" in page):
            # One chunk, the page itself: no boundary can be an anchor this near both ends,
            # and only a heading would start a segment. Most queue entries are this short.
            whole = page[_skip_space(page, 0) :].rstrip()
            bodies: Iterable[str] = [whole] if whole else []
        else:
            bodies = _Page(page, markdown, radius).chunks(max_chars, overlap)
        for body in bodies:
            chunks.append(Chunk(body, chunk_hash(body), number if paged else None))
    return chunks


class _Page:
    """One page's boundaries: `ends[i]` where the text before boundary i ends, `afters[i]`
    where the text after it starts, `strengths[i]` its kind; `rank(i)` how good a cut it is.

    Boundaries are runs of whitespace and the gap after a CJK stop. Most are spaces between
    words, which only count where no stronger boundary is near: they are found and ranked
    with numpy over the whole page, and hashed only when a comparison needs it.
    """

    def __init__(self, text: str, markdown: bool, radius: int) -> None:
        self.text = text
        kind = _KIND[np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)]
        ends, afters = _boundaries(kind)
        self.ends: list[int] = ends.tolist()
        self.afters: list[int] = afters.tolist()
        stop = (kind[ends - 1] & _STOP).astype(bool)
        # A single space is a word boundary, or a sentence's end after a full stop.
        single = (afters - ends == 1) & (kind[ends] & _BLANK).astype(bool)
        strengths = np.where(single & stop, _SENTENCE, _WORD)
        self._ranks: list[float | None] = [None] * len(ends)
        headings: list[int] = []
        # The rest (line breaks, runs of spaces, CJK stops) are few: one by one.
        for i in np.flatnonzero(~single).tolist():
            end, after = self.ends[i], self.afters[i]
            breaks = text.count("\n", end, after)
            if markdown and breaks and _HEADING.match(text, after):
                headings.append(i)
            if markdown and breaks and _HEADING.match(text, text.rfind("\n", 0, end) + 1):
                strengths[i] = _AFTER_HEADING  # a heading stays with the text under it
            elif breaks:
                strengths[i] = _PARAGRAPH if breaks >= 2 else _LINE
            elif stop[i]:
                strengths[i] = _SENTENCE
        self.strengths: list[int] = strengths.tolist()
        self.segment_ends = sorted({*self._anchors(ends, strengths, radius), *headings})

    def rank(self, i: int) -> float:
        """Strength plus a hash in [0, 1), so strength always wins. The text right after a
        boundary decides its hash: text appended to a paragraph leaves its rank alone."""
        r = self._ranks[i]
        if r is None:
            after = self.afters[i]
            digest = zlib.crc32(self.text[after : after + 16].encode("utf-8", "surrogatepass"))
            r = self._ranks[i] = self.strengths[i] + digest / 2**32
        return r

    def _anchors(self, ends: np.ndarray, strengths: np.ndarray, radius: int) -> list[int]:
        """Boundaries that outrank all others within `radius` characters.

        One that has a stronger boundary within reach cannot be an anchor; among those of
        one strength, a sliding maximum over that strength's boundaries alone decides.
        """
        if not len(ends):
            return []
        top = strengths.copy()  # the strongest kind of boundary within reach of each
        for level in sorted(set(self.strengths))[1:]:
            stronger = ends[strengths >= level]
            near = np.searchsorted(stronger, ends + radius, "right") > np.searchsorted(
                stronger, ends - radius, "left"
            )
            top[near] = np.maximum(top[near], level)
        # The page's ends outrank everything: no anchor leaves a stub at either end.
        inside = (ends > radius) & (ends < len(self.text) - radius)
        out: list[int] = []
        for level in set(strengths[(top == strengths) & inside].tolist()):
            of_level = np.flatnonzero(strengths == level).tolist()
            out += self._level_maxima(of_level, radius)
        return [i for i in sorted(out) if inside[i] and top[i] == strengths[i]]

    def _level_maxima(self, indices: list[int], radius: int) -> list[int]:
        """Of these boundaries, those ranked above all the others within `radius`
        (a sliding-window maximum; of equal ranks the later one wins)."""
        ends, rank = self.ends, self.rank
        window: deque[int] = deque()
        out, right = [], 0
        for i in indices:
            end = ends[i]
            while right < len(indices) and ends[indices[right]] <= end + radius:
                j = indices[right]
                while window and rank(window[-1]) <= rank(j):
                    window.pop()
                window.append(j)
                right += 1
            while ends[window[0]] < end - radius:
                window.popleft()
            if window[0] == i:
                out.append(i)
        return out

    def chunks(self, max_chars: int, overlap: int) -> Iterator[str]:
        text = self.text
        # Later chunks of a segment are planned with the longest overlap they may carry.
        room_after = max_chars - (overlap + len(_SEPARATOR) if overlap else 0)
        start, tail = _skip_space(text, 0), ""
        for i in [*self.segment_ends, None]:
            stop = len(text) if i is None else self.ends[i]
            if i is not None and _HEADINGS_ONLY.fullmatch(text, start, stop):
                continue  # a heading that follows only headings joins them
            while start < stop:
                room = max_chars - (len(tail) + len(_SEPARATOR) if tail else 0)
                if stop - start <= room:
                    end, after = stop, len(text) if i is None else self.afters[i]
                else:
                    end, after = self._cut(start, stop, room, room_after)
                body = text[start:end].rstrip()
                if body:
                    yield f"{tail}{_SEPARATOR}{body}" if tail else body
                    tail = _tail(body, overlap)
                start = _skip_space(text, after)

    def _cut(self, start: int, stop: int, room: int, room_after: int) -> tuple[int, int]:
        """Where the chunk from `start` ends, in a segment that ends at `stop`."""
        # The fewest chunks that hold the rest of the segment after this one.
        later = -(-(stop - start - room) // room_after)
        lowest = max(start + 1, stop - later * room_after)
        ends = self.ends
        first, last = bisect_left(ends, lowest), bisect_right(ends, start + room)
        if first < last:
            strongest = max(self.strengths[first:last])
            best = max(
                (i for i in range(first, last) if self.strengths[i] == strongest),
                key=self.rank,
            )
            return ends[best], self.afters[best]
        last -= 1
        if last >= 0 and ends[last] > start:
            return ends[last], self.afters[last]
        end = _hard_cut(self.text, start, start + room)
        return end, end


# What each code point is, as bit flags, looked up for a whole text at once (1.1 MB).
_SPACE, _STOP, _CJK, _BLANK = 1, 2, 4, 8
_KIND = np.zeros(0x110000, np.uint8)
_KIND[[c for c in range(0x3001) if chr(c).isspace()]] |= _SPACE
_KIND[[ord(c) for c in _SENTENCE_END]] |= _STOP
_KIND[[ord(c) for c in _CJK_STOPS]] |= _CJK
_KIND[ord(" ")] |= _BLANK


def _boundaries(kind: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs of whitespace and gaps after a CJK stop, except at either end of the text,
    from the kinds of its characters: (starts, ends)."""
    space = (kind & _SPACE).astype(bool)
    edges = np.diff(space.astype(np.int8), prepend=0, append=0)
    ends, afters = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    after_stop = np.flatnonzero((kind[:-1] & _CJK).astype(bool) & ~space[1:]) + 1
    if len(after_stop):
        ends = np.concatenate([ends, after_stop])
        afters = np.concatenate([afters, after_stop])
        order = np.argsort(ends, kind="stable")
        ends, afters = ends[order], afters[order]
    keep = (ends > 0) & (afters < len(kind))
    return ends[keep], afters[keep]


def _hard_cut(text: str, start: int, limit: int) -> int:
    """A cut inside a run without boundaries, not between a letter and its combining marks."""
    end = limit
    while end > start + 1 and unicodedata.combining(text[end]):
        end -= 1
    return end


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _tail(body: str, limit: int) -> str:
    """The end of `body`'s last paragraph, at most `limit` characters, from a word start."""
    if limit <= 0:
        return ""
    tail = body[-limit:]
    paragraph = tail.rfind(_SEPARATOR)
    if paragraph >= 0:
        return tail[paragraph + len(_SEPARATOR) :].strip()
    if len(body) <= limit:
        return tail.strip()
    space = next((i for i, ch in enumerate(tail) if ch.isspace()), -1)
    if space >= 0:
        return tail[space:].strip()
    # No space at all (CJK, identifiers): a plain character cut, never inside a cluster.
    i = 0
    while i < len(tail) - 1 and unicodedata.combining(tail[i]):
        i += 1
    return tail[i:]
