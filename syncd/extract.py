"""Document bytes → text to chunk, with the format, title and metadata for the payload."""

from __future__ import annotations

import mimetypes
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from syncd.errors import DocumentError

_MARKDOWN = {".md", ".markdown", ".mdown", ".mkd"}
_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?)\n(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)
_ATX_TITLE = re.compile(r"^#[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
# Bytes looked at to tell text from binary, as git and grep do.
_SNIFF = 8192


@dataclass(frozen=True)
class Extracted:
    text: str
    format: str
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def is_markdown(self) -> bool:
        return self.format == "text/markdown"


def extract(name: str, data: bytes) -> Extracted:
    """Raise DocumentError with the reason when the bytes are not a text document."""
    suffix = name[name.rfind(".") :].lower() if "." in name else ""
    if b"\x00" in data[:_SNIFF]:
        raise DocumentError("binary file (contains NUL bytes)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DocumentError(f"invalid UTF-8 at byte {e.start}") from None
    if suffix in _MARKDOWN:
        return _markdown(text)
    fmt = mimetypes.guess_type(name, strict=False)[0] or "text/plain"
    return Extracted(text=text, format=fmt if fmt.startswith("text/") else "text/plain")


def _markdown(text: str) -> Extracted:
    metadata: dict[str, Any] = {}
    match = _FRONT_MATTER.match(text)
    if match:
        try:
            parsed = yaml.safe_load(match.group(1))
        except yaml.YAMLError:
            parsed = None
        # Front-matter that is not a mapping is left in the body, where the author wrote it.
        if isinstance(parsed, dict):
            metadata = _jsonable(parsed)
            text = text[match.end() :]
    title = metadata.get("title")
    if not isinstance(title, str):
        heading = _ATX_TITLE.search(text)
        title = heading.group(1) if heading else None
    return Extracted(text=text, format="text/markdown", title=title, metadata=metadata)


def _jsonable(value: Any) -> Any:
    """YAML dates and other scalars become strings so the payload is plain JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
