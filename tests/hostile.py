"""Small files that cost a naive reader a lot: shared by the extraction and folder tests."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import docx

_WORD = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
# Runs of three characters: the most memory for a DOCX parser per byte inflated.
_RUNS = b"<w:p>" + b"<w:r><w:t>ab </w:t></w:r>" * 40 + b"</w:p>"
# Long runs: seconds of parsing in little memory.
_TEXT = b"<w:p><w:r><w:t>" + b"lorem ipsum dolor sit amet " * 40 + b"</w:t></w:r></w:p>"


def docx_bomb(path: Path, inflated_mib: int, lean: bool = False) -> Path:
    """A valid .docx of a few hundred KB whose document.xml inflates to `inflated_mib` MiB;
    written in a stream, so the test process never holds it.
    """
    paragraph = _TEXT if lean else _RUNS
    template = io.BytesIO()
    doc = docx.Document()
    doc.add_paragraph("x")
    doc.save(template)
    with (
        zipfile.ZipFile(template) as src,
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as out,
    ):
        for item in src.infolist():
            if item.filename != "word/document.xml":
                out.writestr(item, src.read(item.filename))
                continue
            with out.open("word/document.xml", "w", force_zip64=True) as xml:
                xml.write(f'<?xml version="1.0"?><w:document xmlns:w="{_WORD}"><w:body>'.encode())
                for _ in range(inflated_mib * 1024 * 1024 // len(paragraph)):
                    xml.write(paragraph)
                xml.write(b"</w:body></w:document>")
    return path


def alias_bomb(levels: int = 9) -> str:
    """Billion laughs: each level lists the previous one nine times (9**levels values)."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for n in range(1, levels):
        refs = ",".join([f"*l{n - 1}"] * 9)
        lines.append(f"l{n}: &l{n} [{refs}]")
    return "\n".join(lines)


def nested_yaml(depth: int) -> str:
    """A mapping `depth` levels deep, in block style (libyaml caps flow style at 1,000)."""
    return "".join(f"{' ' * i}k:\n" for i in range(depth)) + f"{' ' * depth}leaf"
