"""Deterministic corpora, generated on the spot: nothing is downloaded."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = [
    "river",
    "stone",
    "lamp",
    "harbour",
    "violet",
    "engine",
    "copper",
    "orchard",
    "signal",
    "window",
    "garden",
    "ledger",
    "market",
    "winter",
    "candle",
    "bridge",
    "meadow",
    "compass",
    "lantern",
    "thunder",
    "pebble",
    "summit",
    "canvas",
    "quarry",
    "needle",
    "timber",
    "saddle",
    "falcon",
    "marble",
    "velvet",
    "harvest",
    "beacon",
    "glacier",
]


def paragraph(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def document(seed: int, paragraphs: int = 4, words: int = 60) -> str:
    rng = random.Random(seed)
    title = f"# Note {seed}\n\n"
    return title + "\n\n".join(
        paragraph(rng, rng.randint(words // 2, words)) for _ in range(paragraphs)
    )


def write_corpus(root: Path, files: int, paragraphs: int = 4, words: int = 60) -> list[Path]:
    """`files` Markdown files in folders of 100; returns their paths."""
    paths = []
    for i in range(files):
        path = root / f"d{i // 100:04}" / f"n{i:06}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(document(i, paragraphs, words))
        paths.append(path)
    return paths


def edit(path: Path, seed: int) -> None:
    """Append one sentence to the second paragraph, as an editor would."""
    parts = path.read_text().split("\n\n")
    parts[min(2, len(parts) - 1)] += " " + paragraph(random.Random(seed), 12)
    path.write_text("\n\n".join(parts))
