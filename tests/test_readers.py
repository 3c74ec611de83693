"""Document readers and the parse worker pool, each bad input made as a real file by the test."""

from __future__ import annotations

import codecs
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from slowtune.documents.readers import read_document
from slowtune.documents.types import ParsedDocument, ReadError
from slowtune.documents.worker import CRASH_REASON, parse_many
from slowtune.progress import Cancelled, Progress

# --- builders ------------------------------------------------------------------------------------------


def make_pdf(path: Path, pages: list[list[str]], *, title: str | None = None, **encryption: str) -> Path:
    """One page per item; each page's lines, a line starting with "# " in a large bold font."""
    from fpdf import FPDF

    pdf = FPDF()
    if title:
        pdf.set_title(title)
    for lines in pages:
        pdf.add_page()
        for line in lines:
            if line.startswith("# "):
                pdf.set_font("helvetica", style="B", size=20)
                pdf.multi_cell(0, 10, line[2:], new_x="LMARGIN", new_y="NEXT")
            else:
                pdf.set_font("helvetica", size=11)
                pdf.multi_cell(0, 6, line, new_x="LMARGIN", new_y="NEXT")
    if encryption:
        pdf.set_encryption(**encryption)
    pdf.output(str(path))
    return path


def make_docx(path: Path) -> Path:
    import docx

    d = docx.Document()
    d.core_properties.title = "Field Guide"
    d.add_heading("Field Guide", level=0)  # the "Title" style
    d.add_heading("Birds", level=1)
    d.add_paragraph("Birds have feathers and lay eggs.")
    d.add_paragraph("Robin", style="List Bullet")
    d.add_paragraph("Wren", style="List Bullet")
    d.add_heading("Habitats", level=2)
    table = d.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "Bird", "Habitat"
    table.cell(1, 0).text, table.cell(1, 1).text = "Robin", "Gardens"
    d.add_paragraph("The end.")
    d.save(str(path))
    return path


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def read_error(path: Path, **kw: int) -> ReadError:
    with pytest.raises(ReadError) as info:
        read_document(path, **kw)
    return info.value


# --- PDF -----------------------------------------------------------------------------------------------


def test_multi_page_pdf_has_page_spans_headings_and_paragraphs(tmp_path: Path) -> None:
    path = make_pdf(
        tmp_path / "guide.pdf",
        [
            ["# Chapter One", "The first page talks about apples."],
            [],  # a blank page
            ["# Chapter Two", "The third page talks about pears.", "A second paragraph on pears."],
        ],
        title="Fruit Guide",
    )
    doc = read_document(path)
    assert doc.kind == "pdf" and doc.title == "Fruit Guide"
    assert doc.n_pages == 3 and [s.page for s in doc.pages or []] == [1, 2, 3]
    p1, p2, p3 = doc.pages or []
    assert "Chapter One" in doc.text[p1.char_start : p1.char_end]
    assert "apples" in doc.text[p1.char_start : p1.char_end]
    assert p2.char_start == p2.char_end  # no text on page 2
    page3 = doc.text[p3.char_start : p3.char_end]
    assert "Chapter Two" in page3 and "pears" in page3 and "second paragraph" in page3
    assert "apples" not in page3
    assert any("1 page had no text: 2" in n for n in doc.notes)
    assert "\r" not in doc.text and "\x00" not in doc.text


_ORCHARD = (
    "Apple trees are pruned in late winter while they are dormant, which keeps the wounds small and lets "
    "the tree heal before the spring growth starts in earnest. "
)


def make_structured_pdf(path: Path) -> Path:
    """A large title, a medium section heading, and two body paragraphs that wrap over several lines."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=24)
    pdf.multi_cell(0, 12, "Orchard Handbook", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", style="B", size=16)
    pdf.multi_cell(0, 9, "Pruning Apple Trees", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", size=11)
    pdf.multi_cell(0, 6, "First paragraph. " + _ORCHARD * 3, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(6)
    pdf.multi_cell(0, 6, "Second paragraph. " + _ORCHARD * 3, new_x="LMARGIN", new_y="NEXT")
    pdf.add_page()
    pdf.set_font("helvetica", style="B", size=16)
    pdf.multi_cell(0, 9, "Harvest", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", size=11)
    pdf.multi_cell(0, 6, "Third paragraph. " + _ORCHARD * 2, new_x="LMARGIN", new_y="NEXT")
    pdf.output(str(path))
    return path


def test_pdf_headings_from_font_size_and_rejoined_paragraphs(tmp_path: Path) -> None:
    from slowtune.documents.chunking import chunk_document

    doc = read_document(make_structured_pdf(tmp_path / "orchard.pdf"))
    lines = doc.text.split("\n")
    assert lines[0] == "# Orchard Handbook"
    assert "## Pruning Apple Trees" in lines and "## Harvest" in lines
    assert not [
        line
        for line in lines
        if line.startswith("#") and line not in ("# Orchard Handbook", "## Pruning Apple Trees", "## Harvest")
    ]
    paragraphs = [p for p in doc.text.split("\n\n") if not p.startswith("#")]
    assert len(paragraphs) == 3  # each paragraph's wrapped lines joined into one line
    assert all("\n" not in p for p in paragraphs)
    assert paragraphs[0].startswith("First paragraph. ") and paragraphs[0].endswith("in earnest.")
    assert paragraphs[1] == "Second paragraph. " + (_ORCHARD * 3).strip()
    assert "earnest. Apple" in paragraphs[0]  # joined with one space, no word run together
    # Page spans index the final text.
    p1, p2 = doc.pages or []
    assert doc.text[p1.char_start : p1.char_end].startswith("# Orchard Handbook")
    assert doc.text[p1.char_start : p1.char_end].endswith("in earnest.")
    assert doc.text[p2.char_start : p2.char_end].startswith("## Harvest")
    assert p2.char_end == len(doc.text)

    chunks = chunk_document(doc, doc_hash="0" * 64, target_tokens=128, overlap_tokens=16)
    paths = {c.heading_path for c in chunks}
    assert any("Pruning Apple Trees" in path for path in paths)
    assert any("Harvest" in path for path in paths)
    harvest = next(c for c in chunks if "Third paragraph" in c.text)
    assert harvest.heading_path[-1] == "Harvest" and harvest.page_start == 2


def test_pdf_in_one_font_size_has_no_headings(tmp_path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=11)
    pdf.multi_cell(0, 6, "A short line\n\n" + _ORCHARD * 2, new_x="LMARGIN", new_y="NEXT")
    pdf.output(str(tmp_path / "plain.pdf"))
    doc = read_document(tmp_path / "plain.pdf")
    assert "#" not in doc.text
    assert doc.text == "A short line\n\n" + (_ORCHARD * 2).strip()


def test_pdf_title_falls_back_to_the_file_name(tmp_path: Path) -> None:
    doc = read_document(make_pdf(tmp_path / "notes.pdf", [["hello world"]]))
    assert doc.title == "notes"


def test_corrupt_pdf(tmp_path: Path) -> None:
    good = make_pdf(tmp_path / "good.pdf", [["some text"]]).read_bytes()
    err = read_error(write(tmp_path / "broken.pdf", good[:200]))
    assert (err.reason, err.status) == ("is not a readable PDF", "failed")
    err = read_error(write(tmp_path / "noise.pdf", os.urandom(4096).replace(b"%PDF", b"xxxx")))
    assert (err.reason, err.status) == ("is not a readable PDF", "failed")


def test_password_protected_pdf(tmp_path: Path) -> None:
    path = make_pdf(tmp_path / "secret.pdf", [["classified"]], owner_password="owner", user_password="user")
    err = read_error(path)
    assert (err.reason, err.status) == ("is password-protected", "failed")


def test_pdf_with_no_text_layer(tmp_path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.rect(20, 20, 100, 60, style="F")
    pdf.output(str(tmp_path / "scan.pdf"))
    err = read_error(tmp_path / "scan.pdf")
    assert err.status == "skipped"
    assert err.reason == "has no text layer (a scanned PDF?): run OCR on it first"


# --- empty, size, permissions, names -------------------------------------------------------------------


def test_zero_byte_file(tmp_path: Path) -> None:
    for name in ("empty.txt", "empty.pdf", "empty.docx"):
        err = read_error(write(tmp_path / name, b""))
        assert (err.reason, err.status) == ("is empty", "skipped")


def test_whitespace_only_file(tmp_path: Path) -> None:
    err = read_error(write(tmp_path / "blank.txt", " \n\t\r\n \x00 \n"))
    assert (err.reason, err.status) == ("has no text", "skipped")
    err = read_error(write(tmp_path / "blank.md", "\n\n\n"))
    assert err.status == "skipped"


def test_file_over_the_size_limit(tmp_path: Path) -> None:
    path = write(tmp_path / "big.txt", "x" * 3000)
    err = read_error(path, max_bytes=2048)
    assert err.status == "failed"
    assert err.reason.startswith("is larger than the ") and "MB limit (setting: max_file_mb)" in err.reason
    err = read_error(write(tmp_path / "big2.txt", b"x" * (2**20 + 1)), max_bytes=2**20)
    assert err.reason == "is larger than the 1 MB limit (setting: max_file_mb)"
    assert read_document(path, max_bytes=3000).text == "x" * 3000  # exactly at the limit is fine


_PERM_PROBE = """
import sys
from pathlib import Path
from slowtune.documents.readers import read_document
from slowtune.documents.types import ReadError
try:
    doc = read_document(Path(sys.argv[1]))
    print("OK", doc.text[:20])
except ReadError as e:
    print("ERR", e.status, e.reason)
"""


def _read_as_nobody(path: Path) -> str:
    cmd = [
        "setpriv",
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        sys.executable,
        "-c",
        _PERM_PROBE,
    ]
    out = subprocess.run(
        [*cmd, str(path)], capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent
    )
    return (out.stdout.strip().splitlines() or [f"no output: {out.stderr.strip()[-300:]}"])[-1]


def test_unreadable_file(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        path = write(tmp_path / "locked.txt", "secret")
        path.chmod(0)
        try:
            err = read_error(path)
        finally:
            path.chmod(0o644)
        assert (err.reason, err.status) == ("cannot be read (permission denied)", "failed")
        return
    # As root, chmod proves nothing: read in a child that has dropped to `nobody`.
    if shutil.which("setpriv") is None:
        pytest.skip("running as root and setpriv is missing: cannot test an unreadable file")
    folder = Path(tempfile.mkdtemp(prefix="slowtune-perm-"))  # outside tmp_path, whose parents are 0700
    try:
        folder.chmod(0o755)
        readable = write(folder / "open.txt", "anyone may read this")
        readable.chmod(0o644)
        locked = write(folder / "locked.txt", "secret")
        locked.chmod(0)
        probe = _read_as_nobody(readable)
        if not probe.startswith("OK"):
            pytest.skip(f"cannot run the reader as `nobody` here (needed as root): {probe}")
        assert _read_as_nobody(locked) == "ERR failed cannot be read (permission denied)"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_path_with_unicode_and_spaces(tmp_path: Path) -> None:
    folder = tmp_path / "Dokumente für Ärzte ✓"
    folder.mkdir()
    doc = read_document(write(folder / "Über die Welt — notes ✓.txt", "Grüße aus Köln\n"))
    assert doc.text == "Grüße aus Köln" and doc.title == "Über die Welt — notes ✓"
    doc = read_document(make_pdf(folder / "rapport été 2024.pdf", [["summer report"]]))
    assert "summer report" in doc.text
    assert "Köln" not in doc.title


# --- wrong extensions and unsupported types -----------------------------------------------------------


def test_wrong_extension_is_read_by_content(tmp_path: Path) -> None:
    doc = read_document(write(tmp_path / "liar.pdf", "Just some plain words.\n"))
    assert doc.kind == "txt" and doc.text == "Just some plain words."
    assert "named .pdf but is plain text" in doc.notes

    pdf_bytes = make_pdf(tmp_path / "real.pdf", [["pdf inside"]]).read_bytes()
    doc = read_document(write(tmp_path / "liar.txt", pdf_bytes))
    assert doc.kind == "pdf" and "pdf inside" in doc.text
    assert "named .txt but is a PDF" in doc.notes

    docx_bytes = make_docx(tmp_path / "real.docx").read_bytes()
    doc = read_document(write(tmp_path / "liar2.pdf", docx_bytes))
    assert doc.kind == "docx" and "named .pdf but is a Word document" in doc.notes

    doc = read_document(write(tmp_path / "page.txt", "<!DOCTYPE html><html><body><h1>Hi</h1></body></html>"))
    assert doc.kind == "html" and doc.text == "# Hi"


def test_unsupported_types_are_skipped(tmp_path: Path) -> None:
    for name, data in [
        ("photo.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 100),
        ("script.py", "print('hi')\n"),
        ("noext", "text without an extension"),
    ]:
        err = read_error(write(tmp_path / name, data))
        assert err.status == "skipped", name
        assert err.reason.startswith("is not a supported type (PDF, DOCX, HTML, Markdown, text)")
    # A .txt that holds an image is refused for what it is.
    err = read_error(write(tmp_path / "image.txt", b"\x89PNG\r\n\x1a\n" + os.urandom(200)))
    assert err.status == "skipped" and "PNG image" in err.reason
    err = read_error(write(tmp_path / "garbage.txt", bytes(range(256)) * 4))
    assert err.status == "failed" and "binary" in err.reason


# --- DOCX ----------------------------------------------------------------------------------------------


def test_docx_headings_lists_and_table(tmp_path: Path) -> None:
    doc = read_document(make_docx(tmp_path / "guide.docx"))
    assert doc.kind == "docx" and doc.title == "Field Guide" and doc.pages is None
    assert doc.text == (
        "# Field Guide\n\n"
        "# Birds\n\n"
        "Birds have feathers and lay eggs.\n\n"
        "- Robin\n- Wren\n\n"
        "## Habitats\n\n"
        "| Bird | Habitat |\n| Robin | Gardens |\n\n"
        "The end."
    )


def test_docx_that_is_not_a_zip(tmp_path: Path) -> None:
    err = read_error(write(tmp_path / "fake.docx", b"\x01\x02\x03binary junk\x00\x00\x00" * 50))
    assert err.status == "failed" and err.reason.startswith("is not a valid Word document")
    # A zip that is not a Word document.
    with zipfile.ZipFile(tmp_path / "other.docx", "w") as z:
        z.writestr("hello.txt", "hi")
    err = read_error(tmp_path / "other.docx")
    assert err.status == "failed" and "without word/document.xml" in err.reason
    # A zip whose central directory is cut off.
    data = make_docx(tmp_path / "ok.docx").read_bytes()
    err = read_error(write(tmp_path / "truncated.docx", data[: len(data) // 2]))
    assert err.status == "failed" and "Word document" in err.reason


def _zip_bomb(path: Path, size: int) -> Path:
    chunk = b"\x00" * 2**20
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        with z.open("word/document.xml", "w", force_zip64=True) as f:
            for _ in range(size // len(chunk)):
                f.write(chunk)
    return path


def test_docx_zip_bomb(tmp_path: Path) -> None:
    # 64 MB of zeros packs into ~64 KB: a ratio of ~1000 trips the check, whatever max_bytes is.
    path = _zip_bomb(tmp_path / "bomb.docx", 64 * 2**20)
    assert path.stat().st_size < 2**20
    err = read_error(path)
    assert err.status == "failed" and err.reason.startswith("looks like a zip bomb")
    # Over 20x max_bytes uncompressed also trips it.
    small = _zip_bomb(tmp_path / "small.docx", 2 * 2**20)
    err = read_error(small, max_bytes=50_000)
    assert err.status == "failed" and err.reason.startswith("looks like a zip bomb")


# --- HTML, Markdown, text ------------------------------------------------------------------------------


def test_html_keeps_headings_and_drops_script_style_nav(tmp_path: Path) -> None:
    html = """<!DOCTYPE html><html><head><title>Garden Notes</title>
    <style>body { color: red }</style><script>var secret = "SCRIPT_TEXT";</script></head>
    <body><nav><a href="/">NAV_LINK</a></nav>
    <h1>Planting</h1><p>Plant <b>tomatoes</b> in May.</p>
    <h2>Watering</h2><ul><li>Morning</li><li>Evening</li></ul>
    <script>alert("ALSO_SCRIPT")</script></body></html>"""
    doc = read_document(write(tmp_path / "garden.html", html))
    assert doc.kind == "html" and doc.title == "Garden Notes"
    for gone in ("SCRIPT_TEXT", "ALSO_SCRIPT", "NAV_LINK", "color: red"):
        assert gone not in doc.text
    assert "# Planting" in doc.text and "## Watering" in doc.text
    assert "Plant **tomatoes** in May." in doc.text
    assert "- Morning" in doc.text and "- Evening" in doc.text
    assert "\n\n\n" not in doc.text
    assert read_document(write(tmp_path / "x.htm", "<p>short</p>")).text == "short"


def test_markdown_is_kept_as_is(tmp_path: Path) -> None:
    md = "# Title Here\r\n\r\nSome *emphasis* and `code`.\r\n\r\n\r\n\r\n\r\n## Part\r\n- a\r\n- b\r\n"
    doc = read_document(write(tmp_path / "readme.md", md))
    assert doc.kind == "md" and doc.title == "Title Here"
    assert doc.text == "# Title Here\n\nSome *emphasis* and `code`.\n\n## Part\n- a\n- b"


def test_txt_rst_csv(tmp_path: Path) -> None:
    doc = read_document(write(tmp_path / "a.txt", "line one\nline two\n"))
    assert (doc.kind, doc.title, doc.text, doc.notes) == ("txt", "a", "line one\nline two", [])
    rst = "Title\n=====\n\nBody text.\n"
    assert read_document(write(tmp_path / "b.rst", rst)).text == rst.strip()
    csv = "name,age\nAda,36\n"
    doc = read_document(write(tmp_path / "c.csv", csv))
    assert doc.kind == "txt" and doc.text == "name,age\nAda,36"


def test_text_normalisation(tmp_path: Path) -> None:
    doc = read_document(write(tmp_path / "messy.txt", b"a\r\nb\rc\x00d\n\n\n\n\ne   \n"))
    assert doc.text == "a\nb\ncd\n\ne"


def test_latin1_text(tmp_path: Path) -> None:
    doc = read_document(write(tmp_path / "old.txt", "Café crème — “quoted”".encode("cp1252")))
    assert doc.text == "Café crème — “quoted”"
    assert any("Windows-1252" in n for n in doc.notes)
    doc = read_document(write(tmp_path / "latin.txt", "Grüße, señor".encode("latin-1")))
    assert doc.text == "Grüße, señor"


def test_utf16_and_utf8_bom_text(tmp_path: Path) -> None:
    text = "Ünïcode text ✓\nsecond line"
    for name, data in [
        ("le.txt", codecs.BOM_UTF16_LE + text.encode("utf-16-le")),
        ("be.txt", codecs.BOM_UTF16_BE + text.encode("utf-16-be")),
        ("nobom.txt", text.encode("utf-16-le")),
    ]:
        doc = read_document(write(tmp_path / name, data))
        assert doc.text == text, name
        assert any("UTF-16" in n for n in doc.notes), name
    doc = read_document(write(tmp_path / "bom.txt", codecs.BOM_UTF8 + text.encode()))
    assert doc.text == text and doc.notes == []
    doc = read_document(write(tmp_path / "bom.md", codecs.BOM_UTF8 + b"# Heading\n\nbody"))
    assert doc.title == "Heading" and doc.text.startswith("# Heading")
    doc = read_document(write(tmp_path / "u16.html", codecs.BOM_UTF16_LE + "<h1>Hé</h1>".encode("utf-16-le")))
    assert doc.text == "# Hé"


# --- parse_many ----------------------------------------------------------------------------------------


def _batch(tmp_path: Path) -> dict[str, Path]:
    return {
        "good.txt": write(tmp_path / "good.txt", "hello"),
        "good.pdf": make_pdf(tmp_path / "good.pdf", [["pdf text"]]),
        "good.docx": make_docx(tmp_path / "good.docx"),
        "empty.txt": write(tmp_path / "empty.txt", b""),
        "broken.pdf": write(tmp_path / "broken.pdf", b"%PDF-1.4\ngarbage"),
        "crash.txt": write(tmp_path / "crash.txt", "never read"),
        "after.md": write(tmp_path / "after.md", "# After\n\nstill parsed"),
    }


@pytest.mark.slow
def test_parse_many_mixed_batch_with_a_crashing_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _batch(tmp_path)
    monkeypatch.setenv("SLOWTUNE_TEST_CRASH_ON", "crash.txt")
    events = []
    progress = Progress(events.append, min_interval=0)
    results = dict(parse_many(list(files.values()), max_bytes=2**20, progress=progress, workers=2))
    assert set(results) == set(files.values())  # one result per file, in any order
    by_name = {p.name: r for p, r in results.items()}
    for name in ("good.txt", "good.pdf", "good.docx", "after.md"):
        assert isinstance(by_name[name], ParsedDocument), (name, by_name[name])
    assert "pdf text" in by_name["good.pdf"].text  # type: ignore[union-attr]
    for name, status in (("empty.txt", "skipped"), ("broken.pdf", "failed"), ("crash.txt", "failed")):
        err = by_name[name]
        assert isinstance(err, ReadError) and err.status == status, (name, err)
    assert by_name["crash.txt"].reason == CRASH_REASON  # type: ignore[union-attr]
    assert by_name["empty.txt"].reason == "is empty"  # type: ignore[union-attr]
    parse = [e for e in events if e.stage == "parse"]
    assert parse[0].done == 0 and parse[-1].done == parse[-1].total == len(files)


@pytest.mark.slow
def test_parse_many_times_out_a_hung_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = [write(tmp_path / "hang.txt", "x"), write(tmp_path / "fine.txt", "fine")]
    monkeypatch.setenv("SLOWTUNE_TEST_HANG_ON", "hang.txt")
    results = {p.name: r for p, r in parse_many(files, max_bytes=2**20, workers=2, timeout_s=3)}
    assert isinstance(results["fine.txt"], ParsedDocument)
    err = results["hang.txt"]
    assert isinstance(err, ReadError) and err.status == "failed" and "timed out" in err.reason


@pytest.mark.slow
def test_parse_many_cancel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = [write(tmp_path / f"f{i}.txt", f"file {i}") for i in range(6)]
    files.insert(1, write(tmp_path / "hang.txt", "x"))
    monkeypatch.setenv("SLOWTUNE_TEST_HANG_ON", "hang.txt")
    progress = Progress()
    got = []
    start = time.monotonic()
    with pytest.raises(Cancelled):
        for path, _result in parse_many(files, max_bytes=2**20, progress=progress, workers=2, timeout_s=60):
            got.append(path)
            progress.cancel()
    assert len(got) == 1
    # Cancel from another thread while a worker hangs: the wait loop notices it promptly.
    progress = Progress()
    timer = threading.Timer(2.0, progress.cancel)
    timer.start()
    with pytest.raises(Cancelled):
        list(parse_many([tmp_path / "hang.txt"], max_bytes=2**20, progress=progress, timeout_s=60))
    timer.cancel()
    assert time.monotonic() - start < 30


def test_parse_many_empty_list() -> None:
    assert list(parse_many([], max_bytes=1)) == []


def test_text_that_mentions_the_pdf_magic_stays_text(tmp_path: Path) -> None:
    doc = read_document(write(tmp_path / "about.txt", "A PDF file starts with %PDF-1.7 and then objects."))
    assert doc.kind == "txt" and doc.notes == []
