"""Document bytes → text to chunk, with the format, title, metadata and page breaks.

Plain text, Markdown and source code are decoded here; PDF, Office, OpenDocument, HTML,
e-mail, EPUB and RTF go through kreuzberg (one Rust wheel, no torch, no OCR by default).
Paged formats (PDF) come back with pages joined by form feeds, which `chunking` turns
into the page each chunk starts on.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from typing import Any

from syncd.errors import DocumentError, UnsupportedFormat
from syncd.metadata import json_safe, load_front_matter

PAGE_BREAK = "\f"

_MARKDOWN = {".md", ".markdown", ".mdown", ".mkd"}
_PLAIN = {
    ".txt": "text/plain",
    ".text": "text/plain",
    ".rst": "text/x-rst",
    ".log": "text/plain",
    ".adoc": "text/asciidoc",
    ".org": "text/org",
    ".tex": "text/x-tex",
}
_CODE = {
    ".py": "text/x-python",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".ts": "text/x-typescript",
    ".tsx": "text/x-typescript",
    ".jsx": "text/javascript",
    ".go": "text/x-go",
    ".rs": "text/x-rust",
    ".java": "text/x-java",
    ".kt": "text/x-kotlin",
    ".c": "text/x-c",
    ".h": "text/x-c",
    ".cc": "text/x-c++",
    ".cpp": "text/x-c++",
    ".hpp": "text/x-c++",
    ".cs": "text/x-csharp",
    ".rb": "text/x-ruby",
    ".php": "text/x-php",
    ".swift": "text/x-swift",
    ".scala": "text/x-scala",
    ".sh": "text/x-shellscript",
    ".sql": "text/x-sql",
    ".r": "text/x-r",
    ".lua": "text/x-lua",
    ".css": "text/css",
    ".yaml": "text/yaml",
    ".yml": "text/yaml",
    ".toml": "text/x-toml",
    ".json": "application/json",
    ".xml": "text/xml",
    ".ini": "text/plain",
    ".cfg": "text/plain",
}
# Formats kreuzberg extracts; PDF is the one whose pages reach the payload.
_DOCUMENTS = {
    ".pdf": "application/pdf",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".odt": "application/vnd.oasis.opendocument.text",
    ".csv": "text/csv",
    ".html": "text/html",
    ".htm": "text/html",
    ".eml": "message/rfc822",
    ".epub": "application/epub+zip",
    ".rtf": "application/rtf",
}
_PAGED = {"application/pdf"}
_PAGE_MARKER = "\f<syncd page {page_num}>\f"
_PAGE_SPLIT = re.compile(r"\f?<syncd page (\d+)>\f")
# Document properties worth keeping in the payload's metadata.
_PROPERTIES = ("title", "subject", "authors", "keywords", "language", "created_at", "modified_at")

SUPPORTED_SUFFIXES = sorted(_MARKDOWN | _PLAIN.keys() | _CODE.keys() | _DOCUMENTS.keys())
DEFAULT_INCLUDE = [f"**/*{s}" for s in SUPPORTED_SUFFIXES]

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?)\n(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)
# The closing #s are stripped in Python: a regex for them backtracks quadratically.
_ATX_TITLE = re.compile(r"^#[ \t]+(\S.*)", re.MULTILINE)
# Bytes looked at to tell text from binary, as git and grep do.
_SNIFF = 8192


@dataclass(frozen=True)
class Extracted:
    text: str
    format: str
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Pages are separated by PAGE_BREAK in `text`.
    paged: bool = False

    @property
    def is_markdown(self) -> bool:
        return self.format == "text/markdown"


def extract(name: str, data: bytes, ocr_language: str | None = None) -> Extracted:
    """Raise DocumentError with the reason when the bytes are not a readable document,
    UnsupportedFormat when syncd does not read this kind of file at all.

    With `ocr_language` (a Tesseract language such as "eng"), pages without a text layer
    are read by OCR.
    """
    suffix = _suffix(name)
    if suffix in _DOCUMENTS:
        return _document(data, _DOCUMENTS[suffix], ocr_language)
    known = suffix in _MARKDOWN or suffix in _PLAIN or suffix in _CODE
    if b"\x00" in data[:_SNIFF]:
        if known:
            raise DocumentError("binary file (contains NUL bytes)")
        raise UnsupportedFormat(f"unsupported format ({suffix or 'no extension'}, binary)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DocumentError(f"invalid UTF-8 at byte {e.start}") from None
    if suffix in _MARKDOWN:
        return _markdown(text)
    return Extracted(text=text, format=_PLAIN.get(suffix) or _CODE.get(suffix) or "text/plain")


def needs_worker(name: str) -> bool:
    """Whether extracting `name` runs a parser whose time and memory the bytes decide
    (kreuzberg); plain text and Markdown are decoded here in linear time.
    """
    return _suffix(name) in _DOCUMENTS


def _suffix(name: str) -> str:
    return name[name.rfind(".") :].lower() if "." in name.rsplit("/", 1)[-1] else ""


def _markdown(text: str) -> Extracted:
    metadata: dict[str, Any] = {}
    match = _FRONT_MATTER.match(text)
    if match:
        parsed = load_front_matter(match.group(1))
        if parsed is not None:
            metadata = parsed
            text = text[match.end() :]
    title = metadata.get("title")
    if not isinstance(title, str):
        heading = _ATX_TITLE.search(text)
        title = _heading_text(heading.group(1)) if heading else None
    return Extracted(text=text, format="text/markdown", title=title, metadata=metadata)


def _heading_text(line: str) -> str | None:
    """An ATX heading's text: a closing run of #s counts only after a space ("C#" stays)."""
    text = line.rstrip(" \t")
    unclosed = text.rstrip("#")
    if unclosed != text and (not unclosed or unclosed[-1] in " \t"):
        text = unclosed.rstrip(" \t")
    return text or None


def _document(data: bytes, mime: str, ocr_language: str | None) -> Extracted:
    import kreuzberg  # 80 ms to import; only needed for these formats

    paged = mime in _PAGED
    ocr = None
    if ocr_language:
        _find_tessdata()
        ocr = kreuzberg.OcrConfig(backend="tesseract", language=ocr_language)
    # Page markers in the text, rather than result.pages, because OCR'd pages come back
    # only in the text.
    pages = kreuzberg.PageConfig(
        extract_pages=paged, insert_page_markers=paged, marker_format=_PAGE_MARKER
    )
    config = kreuzberg.ExtractionConfig(pages=pages, **({"ocr": ocr} if ocr else {}))
    try:
        result = kreuzberg.extract_bytes_sync(data, mime, config)
    except Exception as e:  # any failure of the library is this document's, not the run's
        raise DocumentError(_reason(e)) from None
    if paged:
        if not result.get_page_count():
            raise DocumentError("document has no pages")
        text = _join_pages(result.content)
    else:
        text = result.content
    properties = {k: v for k, v in (result.metadata or {}).items() if k in _PROPERTIES and v}
    metadata = json_safe(properties, where="document properties")
    title = metadata.get("title") if isinstance(metadata.get("title"), str) else None
    return Extracted(text=text, format=mime, title=title, metadata=metadata, paged=paged)


def _join_pages(marked: str) -> str:
    """Text with page markers → pages in order, joined by PAGE_BREAK (blank pages kept)."""
    parts = _PAGE_SPLIT.split(marked)
    pages: dict[int, str] = {}
    for number, text in zip(parts[1::2], parts[2::2], strict=True):
        pages[int(number)] = text.strip()
    count = max(pages, default=0)
    return PAGE_BREAK.join(pages.get(n, "") for n in range(1, count + 1))


def _find_tessdata() -> None:
    """Point Tesseract at Debian's language data (tesseract-ocr-eng etc.) unless told."""
    if "TESSDATA_PREFIX" not in os.environ:
        found = sorted(glob.glob("/usr/share/tesseract-ocr/*/tessdata"))
        if found:
            os.environ["TESSDATA_PREFIX"] = found[-1]


def _reason(error: Exception) -> str:
    """kreuzberg repeats its error class in the message: 'ParsingError: Invalid PDF: ...'."""
    text = str(error)
    return text.split(": ", 1)[1] if text.startswith(type(error).__name__ + ": ") else text
