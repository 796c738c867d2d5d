import pytest

from syncd.errors import DocumentError
from syncd.extract import extract


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
