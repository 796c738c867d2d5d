import random
import re
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.chunking import DEFAULT_CUTTING, _Page, chunk_text

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
    # Was `max <= 3`: half-full chunks had room for passages of up to 40 words. Full chunks
    # keep 3 at p95 for edits of a few words (below); a long passage may re-chunk a segment.
    rng = random.Random(7)
    paragraphs = text(3, 120).split("\n\n")
    before = {c.hash for c in chunk_text("\n\n".join(paragraphs), 1000, 100)}
    changed = []
    for n in range(0, 120, 6):
        edited = list(paragraphs)
        edited[n] += " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40)))
        after = {c.hash for c in chunk_text("\n\n".join(edited), 1000, 100)}
        changed.append(len(after - before))
    assert max(changed) <= 5 and sorted(changed)[len(changed) // 2] <= 2, changed


def edit(paragraphs: list[str], rng: random.Random) -> list[str]:
    """Words inserted, deleted or replaced somewhere in one paragraph."""
    out = list(paragraphs)
    i = rng.randrange(len(out))
    words = out[i].split()
    at = rng.randrange(len(words))
    new = [rng.choice(WORDS) for _ in range(rng.randint(0, 12))]
    out[i] = " ".join(words[:at] + new + words[at + rng.randint(0, 6) :]) or "edited"
    return out


def test_an_edit_anywhere_reembeds_at_most_3_chunks_at_p95():
    rng = random.Random(11)
    changed = []
    for seed in range(5):
        paragraphs = text(100 + seed, 80).split("\n\n")
        before = {c.hash for c in chunk_text("\n\n".join(paragraphs), 1000, 100)}
        for _ in range(20):
            after = chunk_text("\n\n".join(edit(paragraphs, rng)), 1000, 100)
            changed.append(len({c.hash for c in after} - before))
    assert sorted(changed)[round(0.95 * (len(changed) - 1))] <= 3, changed


def test_an_edit_early_in_a_long_document_leaves_the_later_chunks_alone():
    paragraphs = text(21, 200).split("\n\n")
    before = chunk_text("\n\n".join(paragraphs), 1000, 100)
    paragraphs[3] += " and a sentence appended here, as an editor would."
    after = chunk_text("\n\n".join(paragraphs), 1000, 100)
    assert [c.hash for c in after[-len(before) // 2 :]] == [
        c.hash for c in before[-len(before) // 2 :]
    ]


def test_chunks_are_fuller_than_half_the_room():
    chunks = chunk_text(text(5, 200), 1000, 100)
    assert sum(len(c.text) for c in chunks) / len(chunks) >= 0.8 * (1000 - 100)


def test_overlap_never_pushes_a_chunk_past_max_chars():
    # One long line of words: the old join made a 1,001-character chunk at max 1000.
    rng = random.Random(14)
    body = " ".join(rng.choice(WORDS) for _ in range(600))
    chunks = chunk_text(body, 1000, 100)
    assert len(chunks) > 1 and max(len(c.text) for c in chunks) <= 1000
    for max_chars in (100, 999, 1000, 1999):
        for c in chunk_text(body * 3, max_chars, max_chars // 2):
            assert len(c.text) <= max_chars


def test_overlap_does_not_carry_a_page_into_the_next():
    pages = [text(8, 6), text(9, 6)]
    chunks = chunk_text("\f".join(pages), 500, 200, paged=True)
    for c in chunks:
        assert squeeze(c.text) in squeeze(pages[c.page - 1])
    assert {c.page for c in chunks} == {1, 2}


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


def squeeze(s: str) -> str:
    return re.sub(r"\s+", "", s)


PIECES = st.sampled_from(
    [
        " ",
        "\n",
        "\n\n",
        "\r\n",
        "\t",
        "\f",
        "# Title\n",
        "\n## Section\n\n",
        "word ",
        "sentence ends. ",
        "x" * 1500,  # a long run without any whitespace
        "漢字とかなの文\u3002次の文\uff01",
        "🙂👍🏽👨‍👩‍👧",
        "e\u0301a\u0308o\u0302",  # combining marks
        "a" * 97 + " ",
    ]
)
TEXT = st.lists(st.one_of(PIECES, st.text(max_size=40)), max_size=60).map("".join)


@settings(max_examples=150, deadline=None)
@given(
    body=TEXT,
    max_chars=st.sampled_from([100, 137, 1000, 1999]),
    overlap=st.floats(0, 0.5),
    markdown=st.booleans(),
    paged=st.booleans(),
)
def test_any_text_gives_bounded_nonempty_chunks_on_their_own_page(
    body, max_chars, overlap, markdown, paged
):
    overlap_chars = int(max_chars * overlap)
    chunks = chunk_text(body, max_chars, overlap_chars, markdown, paged)
    pages = body.replace("\r\n", "\n").split("\f") if paged else [body]
    for c in chunks:
        assert 0 < len(c.text) <= max_chars
        assert c.text.strip()
        # The chunk, overlap included, is one stretch of the page it is labelled with.
        assert squeeze(c.text) in squeeze(pages[c.page - 1 if paged else 0])
    # Every character that is not whitespace lands in a chunk, in order.
    without_overlap = chunk_text(body, max_chars, 0, markdown, paged)
    assert "".join(squeeze(c.text) for c in without_overlap) == squeeze(body)
    assert {ch for c in chunks for ch in c.text} >= set(squeeze(body))


@settings(max_examples=300, deadline=None)
@given(body=TEXT, max_chars=st.sampled_from([100, 137, 1000]), markdown=st.booleans())
def test_a_page_that_fits_is_chunked_as_the_general_path_would(body, max_chars, markdown):
    """The shortcut for a page of at most `max_chars` (most queue entries) changes nothing."""
    page = body.replace("\r\n", "\n").replace("\f", " ")[:max_chars]
    radius = round(DEFAULT_CUTTING.anchor_radius * max_chars)
    general = list(_Page(page, markdown, radius).chunks(max_chars, max_chars // 10))
    assert [c.text for c in chunk_text(page, max_chars, max_chars // 10, markdown)] == general
