import datetime as dt
import json
import tracemalloc

import pytest
from hostile import alias_bomb, nested_yaml

from syncd.errors import DocumentError
from syncd.extract import extract
from syncd.metadata import json_safe


def test_markdown_front_matter_becomes_metadata_and_title():
    doc = extract(
        "a.md", b"---\ntitle: Moths\ndate: 2024-05-01\ntags: [night]\n---\n# Ignored\n\nBody.\n"
    )
    assert doc.metadata == {"title": "Moths", "date": "2024-05-01", "tags": ["night"]}
    assert doc.title == "Moths"
    assert doc.text == "# Ignored\n\nBody.\n"
    assert doc.format == "text/markdown"


def test_markdown_title_falls_back_to_first_heading():
    assert extract("b.md", b"intro\n\n# Real title\n\ntext").title == "Real title"


def test_front_matter_that_is_not_a_mapping_stays_in_the_body():
    doc = extract("c.md", b"---\njust a line\n---\nrest")
    assert doc.metadata == {} and doc.text.startswith("---")


def test_plain_text_format_and_bom():
    doc = extract("n.txt", "\ufeffhello".encode())
    assert (doc.text, doc.format, doc.title, doc.metadata) == ("hello", "text/plain", None, {})


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"abc\x00def", "binary file"), (b"caf\xe9", "invalid UTF-8 at byte 3")],
)
def test_non_text_is_a_document_error_with_reason(data, reason):
    with pytest.raises(DocumentError, match=reason):
        extract("x.txt", data)


def markdown(front_matter: str, body: str = "# Heading\n\nBody.\n") -> bytes:
    return f"---\n{front_matter}\n---\n{body}".encode()


def test_nan_in_front_matter_fails_the_document_with_the_key():
    with pytest.raises(DocumentError, match=r"front matter\.ratio: nan is not a JSON number"):
        extract("n.md", markdown("title: T\nratio: .nan"))


def test_front_matter_nested_2000_deep_fails_the_document_without_recursion():
    with pytest.raises(DocumentError, match="nested deeper than 32 levels"):
        extract("deep.md", markdown(nested_yaml(2000)))


def test_alias_bomb_in_front_matter_is_refused_before_it_is_expanded():
    tracemalloc.start()
    try:
        with pytest.raises(DocumentError, match="describes more than 10000 values"):
            extract("bomb.md", markdown(alias_bomb()))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000


def test_front_matter_aliases_within_bounds_are_expanded():
    doc = extract("m.md", markdown("base: &b {lang: en}\npage:\n  <<: *b\n  n: 2"))
    assert doc.metadata == {"base": {"lang": "en"}, "page": {"lang": "en", "n": 2}}


def test_front_matter_dates_and_keys_become_json_strings():
    doc = extract(
        "d.md",
        markdown(
            "at: 2024-05-01 10:30:00\nbad: 2024-02-30\n2024-01-01: new year\n7: seven\n~: none"
        ),
    )
    assert doc.metadata == {
        "at": "2024-05-01T10:30:00",
        "bad": "2024-02-30",
        "2024-01-01": "new year",
        "7": "seven",
        "null": "none",
    }
    json.dumps(doc.metadata, allow_nan=False)


def test_front_matter_with_an_integer_too_long_to_read_fails_the_document():
    with pytest.raises(DocumentError, match="front matter: Exceeds the limit"):
        extract("i.md", markdown("n: " + "9" * 5000))


def test_heading_title_is_found_in_linear_time_and_keeps_a_sharp():
    assert extract("t.md", b"# C#\n").title == "C#"
    assert extract("t.md", b"# Closed ##  \n").title == "Closed"
    # A line of spaces made the old pattern backtrack quadratically (20,000: 2.6 s).
    spaces = b"# a" + b" " * 1_000_000 + b"b\n"
    assert extract("t.md", spaces).title == "a" + " " * 1_000_000 + "b"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"x": float("inf")}, r"meta\.x: inf is not a JSON number"),
        ({"x": [1, b"raw"]}, r"meta\.x\[1\]: a bytes value is not JSON"),
        ({"x": 2**64}, r"meta\.x: integer out of the 64-bit range"),
        ({"x": "\ud800"}, r"meta\.x: text is not valid Unicode"),
        ({"x": object()}, r"meta\.x: a object value is not JSON"),
        (list(range(20_000)), "more than the allowed number of values"),
    ],
)
def test_json_safe_refuses_what_json_cannot_carry(value, reason):
    with pytest.raises(DocumentError, match=reason):
        json_safe(value, where="meta")


def test_json_safe_stops_at_depth_of_queue_metadata_nested_100000_deep():
    deep: dict = {}
    inner = deep
    for _ in range(100_000):
        inner["k"] = inner = {}
    with pytest.raises(DocumentError, match="nested deeper than 32 levels"):
        json_safe(deep)


def test_json_safe_keeps_plain_values_and_orders_sets():
    value = {"a": (1, 2.5, None, True), "s": {"b", "a"}, "d": dt.date(2024, 5, 1)}
    assert json_safe(value) == {"a": [1, 2.5, None, True], "s": ["a", "b"], "d": "2024-05-01"}
