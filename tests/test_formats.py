"""Real documents of every supported format, built here with their own libraries."""

from __future__ import annotations

import asyncio
import io
import os
import zipfile
from email.message import EmailMessage
from pathlib import Path

import pytest
from conftest import points
from docx import Document
from fpdf import FPDF
from openpyxl import Workbook
from pptx import Presentation

from syncd.engine import opened
from syncd.extract_pool import ExtractPool
from syncd.store import SearchQuery

SENTENCES = {
    "report.pdf": None,  # pages, below
    "letter.docx": "The orchard harvest produced three tonnes of cider apples this autumn.",
    "deck.pptx": "Quarterly slides: the submarine cable reached the island in March.",
    "sheet.xlsx": "glacier",
    "table.csv": "volcano",
    "page.html": "The violin maker carves spruce tops by hand in her workshop.",
    "mail.eml": "Please water the greenhouse tomatoes while I am on holiday.",
    "book.epub": "The lighthouse keeper polished the great lens every evening at dusk.",
    "notes.odt": "Our choir rehearses the harpsichord cantata on Thursday nights.",
    "memo.rtf": "The octopus escaped from its aquarium tank twice last week.",
    "tool.py": "def count_penguins(colony):\n    return len(colony)  # penguins on the ice shelf\n",
}
PDF_PAGES = [
    "Page one introduces the annual report of the rowing club.",
    "Page two lists the boats and their repairs over the winter.",
    "Page three records that the zebracorn trophy was won by the junior crew.",
]


def pdf(pages: list[str]) -> bytes:
    doc = FPDF()
    doc.set_title("Rowing club report")
    doc.set_font("Helvetica", size=12)
    for text in pages:
        doc.add_page()
        doc.multi_cell(0, 10, text)
    return bytes(doc.output())


def docx(text: str) -> bytes:
    d = Document()
    d.core_properties.title = "Harvest letter"
    d.core_properties.author = "Orchard office"
    d.add_heading("Harvest", 1)
    d.add_paragraph(text)
    out = io.BytesIO()
    d.save(out)
    return out.getvalue()


def pptx(text: str) -> bytes:
    p = Presentation()
    for title, body in (("Intro", "Welcome to the quarterly review."), ("Cable", text)):
        slide = p.slides.add_slide(p.slide_layouts[1])
        slide.shapes.title.text = title
        slide.placeholders[1].text = body
    out = io.BytesIO()
    p.save(out)
    return out.getvalue()


def xlsx(word: str) -> bytes:
    wb = Workbook()
    ws = wb.active
    ws.title = "Landforms"
    ws.append(["name", "description"])
    ws.append([word, "a slow river of ice carving a valley"])
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def eml(text: str) -> bytes:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "ana@example.com", "ben@example.com", "Greenhouse"
    m.set_content(text)
    return bytes(m)


def opendocument_zip(mimetype: str, files: dict[str, str]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("mimetype", mimetype, compress_type=zipfile.ZIP_STORED)
        for name, content in files.items():
            z.writestr(name, content)
    return out.getvalue()


def epub(text: str) -> bytes:
    return opendocument_zip(
        "application/epub+zip",
        {
            "META-INF/container.xml": '<?xml version="1.0"?><container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container"><rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/></rootfiles></container>',
            "OEBPS/content.opf": '<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" version="2.0" unique-identifier="id"><metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>The Keeper</dc:title><dc:identifier id="id">k1</dc:identifier><dc:language>en</dc:language></metadata><manifest><item id="c1" href="c1.xhtml" media-type="application/xhtml+xml"/></manifest><spine><itemref idref="c1"/></spine></package>',
            "OEBPS/c1.xhtml": f'<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"><head><title>One</title></head><body><p>{text}</p></body></html>',
        },
    )


def odt(text: str) -> bytes:
    return opendocument_zip(
        "application/vnd.oasis.opendocument.text",
        {
            "META-INF/manifest.xml": '<?xml version="1.0"?><manifest:manifest xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0"><manifest:file-entry manifest:full-path="/" manifest:media-type="application/vnd.oasis.opendocument.text"/><manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml"/></manifest:manifest>',
            "content.xml": f'<?xml version="1.0"?><office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" office:version="1.2"><office:body><office:text><text:p>{text}</text:p></office:text></office:body></office:document-content>',
        },
    )


def build(root: Path) -> None:
    s = SENTENCES
    files = {
        "report.pdf": pdf(PDF_PAGES),
        "letter.docx": docx(s["letter.docx"]),
        "deck.pptx": pptx(s["deck.pptx"]),
        "sheet.xlsx": xlsx(s["sheet.xlsx"]),
        "table.csv": f"name,kind\n{s['table.csv']},a mountain that erupts lava\n".encode(),
        "page.html": f"<html><head><title>Luthier</title><script>var tracking = 'zzsecretzz';</script><style>p {{color: red}}</style></head><body><p>{s['page.html']}</p></body></html>".encode(),
        "mail.eml": eml(s["mail.eml"]),
        "book.epub": epub(s["book.epub"]),
        "notes.odt": odt(s["notes.odt"]),
        "memo.rtf": (
            "{\\rtf1\\ansi{\\fonttbl\\f0\\fswiss Helvetica;}\\f0\\pard " + s["memo.rtf"] + "\\par}"
        ).encode(),
        "tool.py": s["tool.py"].encode(),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)


@pytest.fixture
def library(docs: Path) -> Path:
    build(docs)
    return docs


def texts_by_path(settings) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in sorted(points(settings).values(), key=lambda p: p["chunk_index"]):
        out[p["path"]] = out.get(p["path"], "") + p["text"]
    return out


def test_every_format_syncs_with_its_words_and_format(library, settings, resync):
    report = resync(settings)
    assert (report.added, report.failed, report.skipped) == (11, 0, 0), report.failures
    texts = texts_by_path(settings)
    for name, sentence in SENTENCES.items():
        expected = sentence.split("\n")[0] if sentence else PDF_PAGES[2]
        assert expected.split()[-1].strip(".") in texts[name], name
    assert "zzsecretzz" not in texts["page.html"] and "color" not in texts["page.html"]
    formats = {p["path"]: p["format"] for p in points(settings).values()}
    assert formats["report.pdf"] == "application/pdf"
    assert formats["letter.docx"].endswith("wordprocessingml.document")
    assert formats["tool.py"] == "text/x-python"
    letter = next(p for p in points(settings).values() if p["path"] == "letter.docx")
    assert letter["title"] == "Harvest letter" and letter["metadata"]["authors"] == [
        "Orchard office"
    ]


def test_pdf_word_on_page_3_comes_back_from_search_with_page_3(library, settings, resync, embedder):
    resync(settings)

    async def search():
        async with opened(settings, embedder=embedder) as engine:
            return await engine.search(
                SearchQuery("who won the zebracorn trophy", mode="dense", limit=1)
            )

    (hit,) = asyncio.run(search())
    assert (hit.payload["path"], hit.payload["page"]) == ("report.pdf", 3)
    pages = sorted(p["page"] for p in points(settings).values() if p["path"] == "report.pdf")
    assert pages[0] == 1 and pages[-1] == 3
    assert all("page" not in p for p in points(settings).values() if p["path"] != "report.pdf")


@pytest.mark.parametrize(
    ("query", "path"),
    [
        ("cider apples from the orchard", "letter.docx"),
        ("undersea cable to the island", "deck.pptx"),
        ("handmade violins", "page.html"),
        ("watering tomatoes during the holiday", "mail.eml"),
        ("lighthouse lens", "book.epub"),
        ("choir rehearsal", "notes.odt"),
        ("octopus escaping the aquarium", "memo.rtf"),
    ],
)
def test_documents_are_searchable_by_meaning(library, settings, resync, embedder, query, path):
    resync(settings)

    async def search():
        async with opened(settings, embedder=embedder) as engine:
            return await engine.search(SearchQuery(query, mode="dense", limit=1))

    assert asyncio.run(search())[0].payload["path"] == path


def test_bad_documents_fail_with_the_library_reason_and_the_rest_syncs(library, settings, resync):
    good = (library / "letter.docx").read_bytes()
    (library / "truncated.docx").write_bytes(good[: len(good) // 2])
    (library / "corrupt.pdf").write_bytes(b"%PDF-1.4\n" + os.urandom(300))
    (library / "html-in-disguise.pdf").write_bytes(b"<html><body>not a pdf</body></html>")
    (library / "unknown.bin").write_bytes(b"\x00\x01\x02")
    report = resync(settings)
    reasons = {f.path: f.reason for f in report.failures}
    assert set(reasons) == {"truncated.docx", "corrupt.pdf", "html-in-disguise.pdf"}
    assert "zip" in reasons["truncated.docx"].lower()
    assert "pdf" in reasons["corrupt.pdf"].lower()
    assert report.added == 11 + 0 and report.skipped == 0  # unknown.bin is not included


def test_unknown_types_included_explicitly_are_skipped_not_failed(docs, make_config, resync):
    from syncd.config import load_config

    (docs / "blob.bin").write_bytes(b"\x00\x01\x02")
    (docs / "notes.txt").write_text("plain words")
    settings = load_config(
        make_config(sources=[{"name": "docs", "path": "./docs", "include": ["**/*"]}])
    )
    report = resync(settings)
    assert (report.added, report.skipped, report.failed) == (1, 1, 0)


def test_unchanged_pdf_is_not_extracted_again(library, settings, resync, monkeypatch):
    resync(settings)
    calls = []
    real = ExtractPool.extract

    async def counting(pool, name, *args):
        calls.append(name)
        return await real(pool, name, *args)

    monkeypatch.setattr(ExtractPool, "extract", counting)
    os.utime(library / "report.pdf")  # new mtime, same bytes
    report = resync(settings)
    assert (report.unchanged, report.texts_embedded, calls) == (11, 0, [])


def scanned_pdf(sentence: str) -> bytes:
    """A PDF whose only page is a picture of the sentence: no text layer."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (1400, 240), "white")
    ImageDraw.Draw(image).text(
        (20, 90), sentence, fill="black", font=ImageFont.load_default(size=44)
    )
    png = io.BytesIO()
    image.save(png, "PNG")
    doc = FPDF()
    doc.add_page()
    doc.image(io.BytesIO(png.getvalue()), x=10, y=10, w=190)
    return bytes(doc.output())


def english_tessdata() -> bool:
    """As syncd.extract finds it: $TESSDATA_PREFIX, else Debian's tesseract-ocr-eng."""
    prefix = os.environ.get("TESSDATA_PREFIX")
    found = [Path(prefix)] if prefix else Path("/").glob("usr/share/tesseract-ocr/*/tessdata")
    return any((d / "eng.traineddata").is_file() for d in found)


@pytest.mark.skipif(
    not english_tessdata(),
    reason="needs Tesseract's English data: apt-get install tesseract-ocr-eng (.ci/run does)",
)
def test_ocr_reads_a_scanned_pdf_only_when_switched_on(docs, make_config, resync):
    from syncd.config import load_config

    (docs / "scan.pdf").write_bytes(scanned_pdf("The scanned word is pelican."))
    plain = load_config(make_config())
    resync(plain)
    assert all("pelican" not in p["text"] for p in points(plain).values())
    with_ocr = load_config(make_config(sources=[{"name": "docs", "path": "./docs", "ocr": True}]))
    resync(with_ocr, force=True)
    (page,) = [p for p in points(with_ocr).values() if p["path"] == "scan.pdf"]
    assert "pelican" in page["text"] and page["page"] == 1
