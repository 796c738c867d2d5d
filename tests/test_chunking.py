import random
from itertools import pairwise

import pytest

from syncd.chunking import chunk_text

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
]


def text(seed: int, paragraphs: int) -> str:
    rng = random.Random(seed)
    return "\n\n".join(
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 120))).capitalize() + "."
        for _ in range(paragraphs)
    )


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("max_chars", "overlap"), [(1000, 100), (300, 0), (1999, 200)])
def test_every_chunk_is_within_max_chars(seed, max_chars, overlap):
    body = text(seed, 40) + "\n\n" + "x" * 5000 + "\n\n" + "long sentence. " * 400
    chunks = chunk_text(body, max_chars, overlap)
    assert chunks and all(0 < len(c.text) <= max_chars for c in chunks)


def test_chunks_cover_the_text_in_order():
    body = text(1, 30)
    chunks = chunk_text(body, 800, 0)
    assert " ".join(c.text for c in chunks).split() == body.split()


def test_overlap_repeats_the_end_of_the_previous_chunk():
    chunks = chunk_text(text(2, 30), 800, 100)
    for before, after in pairwise(chunks):
        head = after.text.split("\n\n")[0]
        assert 0 < len(head) <= 100 and before.text.endswith(head)


def test_markdown_headings_start_a_chunk():
    body = "\n\n".join(f"## Section {n}\n\n{text(n, 2)}" for n in range(6))
    starts = [c.text.split("\n\n")[0] for c in chunk_text(body, 1000, 0, markdown=True)]
    assert sum(s.startswith("## Section") for s in starts) == 6


def test_one_edited_paragraph_changes_few_chunks():
    rng = random.Random(7)
    paragraphs = text(3, 120).split("\n\n")
    before = {c.hash for c in chunk_text("\n\n".join(paragraphs), 1000, 100)}
    changed = []
    for n in range(0, 120, 6):
        edited = list(paragraphs)
        edited[n] += " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40)))
        after = {c.hash for c in chunk_text("\n\n".join(edited), 1000, 100)}
        changed.append(len(after - before))
    assert max(changed) <= 3, changed


def test_chunking_is_deterministic():
    body = text(4, 50)
    assert chunk_text(body, 700, 70) == chunk_text(body, 700, 70)


def test_a_title_heading_stays_with_the_first_section():
    body = "# Title\n\n## First\n\nSome text.\n\n## Second\n\nMore text."
    first = chunk_text(body, 1000, 0, markdown=True)[0].text
    assert first == "# Title\n\n## First\n\nSome text."


def test_paged_text_gives_each_chunk_the_page_it_starts_on():
    pages = ["First page text.", "Second page.\n\nStill page two.", "", "Fourth page."]
    chunks = chunk_text("\f".join(pages), 1000, 0, paged=True)
    assert [(c.text, c.page) for c in chunks] == [
        ("First page text.", 1),
        ("Second page.\n\nStill page two.", 2),
        ("Fourth page.", 4),
    ]
    assert all(c.page is None for c in chunk_text("a\fb", 1000, 0))
