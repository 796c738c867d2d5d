"""Chunking: how full the chunks are vs. how many one paragraph edit re-embeds.

Side by side for several anchor radii (syncd's one knob, see syncd/chunking.py) and for
LangChain's RecursiveCharacterTextSplitter at the same max_chars and overlap. A chunk is
re-embedded when its text (so its hash) is not among the document's chunks before the
edit, which is what syncd's vector cache keys on.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.corpus import WORDS, document, paragraph
from bench.harness import percentile
from syncd.chunking import Cutting, chunk_text

MAX_CHARS, OVERLAP = 1000, 100
RADII = (0.5, 0.6, 0.8, 1.0, 1.5)

Splitter = Callable[[str], list[str]]


def edited(text: str, rng: random.Random) -> str:
    """One paragraph edited: a sentence appended, or words replaced, inserted or deleted."""
    paras = text.split("\n\n")
    i = rng.randrange(1, len(paras))  # not the title
    words = paras[i].rstrip(".").split()
    at = rng.randrange(len(words))
    kind = rng.choice(("append", "replace", "insert", "delete"))
    if kind == "append":
        paras[i] += " " + paragraph(rng, rng.randint(3, 20))
    else:
        if kind == "replace":
            words[at] = rng.choice(WORDS)
        elif kind == "insert":
            words[at:at] = rng.choices(WORDS, k=rng.randint(1, 10))
        else:
            del words[at : at + rng.randint(1, 8)]
        paras[i] = " ".join(words or ["gone"]) + "."
    return "\n\n".join(paras)


def reembedded(split: Splitter, docs: list[str], edits: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    out = []
    for n in range(edits):
        text = docs[n % len(docs)]
        before = set(split(text))
        out.append(len(set(split(edited(text, rng))) - before))
    return out


def measure(split: Splitter, corpus: list[str], long_docs: list[str], edits: int) -> dict:
    started = time.perf_counter()
    texts = [t for doc in corpus for t in split(doc)]
    seconds = time.perf_counter() - started
    row: dict[str, Any] = {
        "chunks": len(texts),
        "avg_chars": statistics.mean(map(len, texts)),
        "max_chars": max(map(len, texts)),
        "chunk_seconds": seconds,
    }
    for name, docs in (("edit", corpus), ("long_edit", long_docs)):
        touched = reembedded(split, docs, edits)
        row |= {f"{name}_p50": percentile(touched, 50), f"{name}_p95": percentile(touched, 95)}
    return row


def chunking(files: int, edits: int, peer: bool) -> dict[str, Any]:
    """The bench corpus (8 paragraphs a file, as scenarios 1 and 6) and 60-paragraph docs."""
    corpus = [document(i, paragraphs=8) for i in range(files)]
    long_docs = [document(i, paragraphs=60) for i in range(max(1, edits // 10))]
    splitters: dict[str, Splitter] = {
        f"syncd r={r:g}": lambda t, r=r: [
            c.text for c in chunk_text(t, MAX_CHARS, OVERLAP, True, cutting=Cutting(r))
        ]
        for r in RADII
    }
    if peer:
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        lc = RecursiveCharacterTextSplitter(chunk_size=MAX_CHARS, chunk_overlap=OVERLAP)
        splitters["langchain"] = lc.split_text
    rows = {name: measure(split, corpus, long_docs, edits) for name, split in splitters.items()}
    if peer:
        for row in rows.values():
            row["count_ratio_to_langchain"] = row["chunks"] / rows["langchain"]["chunks"]
    return {
        "files": files,
        "edits": edits,
        "max_chars": MAX_CHARS,
        "overlap_chars": OVERLAP,
        "default_radius": Cutting().anchor_radius,
        "rows": rows,
        "one_mb_seconds": one_mb(),
    }


def one_mb() -> dict[str, float]:
    """Issue 13: 1 MB without blank lines, and without any whitespace."""
    rng = random.Random(1)
    line = " ".join(rng.choices(WORDS, k=150_000))[:1_000_000]
    out = {}
    for name, text in (("no_blank_lines", line), ("no_whitespace", "x" * 1_000_000)):
        started = time.perf_counter()
        chunk_text(text, MAX_CHARS, OVERLAP)
        out[name] = time.perf_counter() - started
    return out
