"""Readers: one file on disk -> a ``ParsedDocument`` (or a ``ReadError`` saying why not).

The real type is found from the content (magic bytes), not trusted from the extension: a ``.pdf`` that is
really plain text is read as text, with a note. Text is normalised Markdown-like plain text (see
``types.py``): ``\\n`` newlines, no NULs or control characters, at most one blank line in a row.

Every ``ReadError`` reason is phrased to follow the file's name ("report.pdf is password-protected").
Heavy libraries (pypdfium2, python-docx, beautifulsoup4, markdownify) are imported only where used.
"""

from __future__ import annotations

import codecs
import itertools
import re
import zipfile
from pathlib import Path
from typing import Any

from slowtune.documents.types import PageSpan, ParsedDocument, ReadError

DEFAULT_MAX_BYTES = 100 * 2**20

SUPPORTED = "PDF, DOCX, HTML, Markdown, text"
UNSUPPORTED_REASON = f"is not a supported type ({SUPPORTED})"

# Extensions and the kind they claim. Content decides in the end (see ``_sniff``).
EXTENSIONS = {
    ".pdf": "pdf",
    ".docx": "docx",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".md": "md",
    ".markdown": "md",
    ".txt": "txt",
    ".text": "txt",
    ".rst": "txt",
    ".csv": "txt",
}

KIND_NAMES = {
    "pdf": "a PDF",
    "docx": "a Word document",
    "html": "HTML",
    "md": "Markdown",
    "txt": "plain text",
}

# Zip-bomb guards for DOCX, checked from the zip's directory before python-docx opens anything.
ZIP_MAX_UNCOMPRESSED_FACTOR = 20  # total uncompressed size may be at most 20x max_bytes
ZIP_MAX_RATIO = 100  # ... and, once it is large, at most 100x the compressed size
ZIP_RATIO_FLOOR = 10 * 2**20  # small zips may compress as well as they like
ZIP_MAX_MEMBERS = 10_000

_HEAD_BYTES = 8192


def read_document(path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> ParsedDocument:
    """Parse one file. Raises ``ReadError(reason, status)``; ``status`` is "skipped" or "failed"."""
    path = Path(path)
    ext = path.suffix.lower()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ReadError("does not exist (was it moved or deleted?)", "failed") from None
    except PermissionError:
        raise ReadError("cannot be read (permission denied)", "failed") from None
    except OSError as e:
        raise ReadError(f"cannot be read ({e.strerror or e})", "failed") from None
    if path.is_dir():
        raise ReadError(f"is a folder, not a document: {UNSUPPORTED_REASON[3:]}", "skipped")
    if st.st_size == 0:
        raise ReadError("is empty", "skipped")
    if st.st_size > max_bytes:
        raise ReadError(f"is larger than the {_mb(max_bytes)} MB limit (setting: max_file_mb)", "failed")

    claimed = EXTENSIONS.get(ext)
    if claimed is None:
        raise ReadError(UNSUPPORTED_REASON, "skipped")

    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
    except PermissionError:
        raise ReadError("cannot be read (permission denied)", "failed") from None
    except OSError as e:
        raise ReadError(f"cannot be read ({e.strerror or e})", "failed") from None

    actual = _sniff(head, path, claimed)
    notes: list[str] = []
    if actual == "binary":
        if claimed == "pdf":
            raise ReadError("is not a readable PDF", "failed")
        if claimed == "docx":
            raise ReadError("is not a valid Word document (not a zip file)", "failed")
        raise ReadError("does not contain text (it looks like a binary file)", "failed")
    if actual.startswith("unsupported:"):
        what = actual.split(":", 1)[1]
        if claimed == "docx":
            raise ReadError(f"is not a valid Word document ({what})", "failed")
        raise ReadError(f"{UNSUPPORTED_REASON}: it is {what}", "skipped")

    kind = actual
    if actual == "text":
        # Text content: the extension chooses among the text kinds; a binary extension was a lie.
        kind = claimed if claimed in ("html", "md", "txt") else "txt"
    if kind == "txt" and claimed in ("txt", "pdf", "docx") and _looks_like_html(head):
        kind = "html"
    if kind != claimed:
        notes.append(f"named {ext} but is {KIND_NAMES[kind]}")

    if kind == "pdf":
        doc = _read_pdf(path)
    elif kind == "docx":
        doc = _read_docx(path, max_bytes)
    else:
        data = _read_bytes(path, max_bytes)
        text, enc_note = decode_text(data)
        if enc_note:
            notes.append(enc_note)
        if kind == "html":
            doc = _read_html(text, path)
        elif kind == "md":
            doc = ParsedDocument(title=_md_title(text) or path.stem, kind="md", text=normalise_text(text))
        else:
            doc = ParsedDocument(title=path.stem, kind="txt", text=normalise_text(text))
    doc.notes[:0] = notes
    if not doc.text.strip():
        raise ReadError("has no text", "skipped")
    return doc


# --- type detection -----------------------------------------------------------------------------------


def _sniff(head: bytes, path: Path, claimed: str) -> str:
    """The content's kind from its first bytes: pdf, docx, text, binary, or "unsupported:<what it is>"."""
    # PDF readers tolerate junk before the header; only trust that when the name says .pdf too, so that
    # a text file quoting "%PDF-" near its start is still text.
    if head.startswith(b"%PDF-") or (claimed == "pdf" and b"%PDF-" in head[:1024]):
        return "pdf"
    if head.startswith(b"PK\x03\x04"):
        return _sniff_zip(path)
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return "unsupported:an old-style Office file (.doc/.xls/.ppt): save it as .docx"
    for magic, what in (
        (b"\x89PNG", "a PNG image"),
        (b"\xff\xd8\xff", "a JPEG image"),
        (b"GIF8", "a GIF image"),
        (b"{\\rtf", "an RTF document: save it as .docx"),
    ):
        if head.startswith(magic):
            return f"unsupported:{what}"
    return "text" if _looks_like_text(head) else "binary"


def _sniff_zip(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return "binary"
    if "word/document.xml" in names:
        return "docx"
    if "xl/workbook.xml" in names:
        return "unsupported:an Excel workbook"
    if "ppt/presentation.xml" in names:
        return "unsupported:a PowerPoint presentation"
    return "unsupported:a zip archive without word/document.xml"


def _looks_like_text(head: bytes) -> bool:
    if head.startswith((codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or _utf16_guess(head):
        return True
    if not head:
        return True
    sample = head
    # A truncated multi-byte character at the end of the sample must not count as binary.
    text = sample.decode("utf-8", errors="ignore") if _is_utf8_prefix(sample) else sample.decode("latin-1")
    bad = sum(1 for ch in text if ord(ch) < 32 and ch not in "\t\n\r\f\v\x1b")
    return bad <= max(1, len(text) // 100)


def _is_utf8_prefix(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError as e:
        return e.start >= len(data) - 3 and e.reason in ("unexpected end of data",)


def _utf16_guess(data: bytes) -> str | None:
    """BOM-less UTF-16 of mostly-ASCII text: every other byte is NUL."""
    sample = data[:4096]
    if len(sample) < 8:
        return None
    even, odd = sample[0::2], sample[1::2]
    if odd.count(0) > 0.8 * len(odd) and even.count(0) < 0.1 * len(even):
        return "utf-16-le"
    if even.count(0) > 0.8 * len(even) and odd.count(0) < 0.1 * len(odd):
        return "utf-16-be"
    return None


def _looks_like_html(head: bytes) -> bool:
    start = head[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if b"\x00" in start:
        try:
            start = decode_text(head[:1024])[0].lstrip().lower().encode()
        except Exception:
            return False
    return start.startswith((b"<!doctype html", b"<html")) or (
        start.startswith(b"<?xml") and b"<html" in start
    )


# --- text ---------------------------------------------------------------------------------------------


def decode_text(data: bytes) -> tuple[str, str | None]:
    """Bytes -> (text, note or None). BOMs first, then UTF-8, then Windows-1252 (Latin-1) with a note."""
    for bom, codec, name in (
        (codecs.BOM_UTF32_LE, "utf-32-le", None),  # before UTF-16 LE: its BOM starts the same way
        (codecs.BOM_UTF32_BE, "utf-32-be", None),
        (codecs.BOM_UTF8, "utf-8", None),
        (codecs.BOM_UTF16_LE, "utf-16-le", "read as UTF-16"),
        (codecs.BOM_UTF16_BE, "utf-16-be", "read as UTF-16"),
    ):
        if data.startswith(bom):
            body = data[len(bom) :]
            if codec.startswith("utf-32") and len(body) % 4:
                continue  # not really UTF-32 (e.g. UTF-16 LE text starting with a NUL character)
            return body.decode(codec, errors="replace"), name
    guess = _utf16_guess(data)
    if guess:
        return data.decode(guess, errors="replace"), "read as UTF-16 (no byte-order mark)"
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252"), "not valid UTF-8: read as Windows-1252 (Latin-1)"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "not valid UTF-8: read as Latin-1"


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_BLANKS = re.compile(r"\n{3,}")


def normalise_text(text: str) -> str:
    """``\\n`` newlines, no NULs/control characters, no trailing spaces, at most one blank line in a row."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n\n")
    text = text.replace("\x0c", "\n\n").replace("\ufeff", "")
    text = _CONTROL.sub("", text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _BLANKS.sub("\n\n", text).strip("\n")


def _read_bytes(path: Path, max_bytes: int) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except PermissionError:
        raise ReadError("cannot be read (permission denied)", "failed") from None
    except OSError as e:
        raise ReadError(f"cannot be read ({e.strerror or e})", "failed") from None
    if len(data) > max_bytes:  # it grew since stat()
        raise ReadError(f"is larger than the {_mb(max_bytes)} MB limit (setting: max_file_mb)", "failed")
    return data


def _md_title(text: str) -> str | None:
    m = re.search(r"^#\s+(.+?)\s*#*\s*$", text, re.MULTILINE)
    return m.group(1).strip() if m else None


def _mb(n: int) -> str:
    return f"{n / 2**20:.3g}"


# --- PDF ----------------------------------------------------------------------------------------------

# Heading detection from font size: a line at least this much larger than the body text (the size that
# covers most characters in the document) and shorter than this is a heading; at most this many levels.
HEADING_MIN_RATIO = 1.2
HEADING_MAX_CHARS = 120
HEADING_MAX_LEVELS = 3
_SENTENCE_END = tuple('.!?:;"\u201d\u2019)')


class _PdfLine:
    """One text line of a PDF page: its text, font size (0: unknown), and whether a paragraph starts here."""

    __slots__ = ("new_para", "size", "text")

    def __init__(self, text: str, size: float, new_para: bool) -> None:
        self.text = text
        self.size = size
        self.new_para = new_para


def _read_pdf(path: Path) -> ParsedDocument:
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    try:
        pdf = pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as e:
        code = getattr(e, "err_code", None)
        if code == pdfium_c.FPDF_ERR_PASSWORD:
            raise ReadError("is password-protected", "failed") from None
        if code == pdfium_c.FPDF_ERR_SECURITY:
            raise ReadError("is password-protected (or uses unsupported encryption)", "failed") from None
        if code == pdfium_c.FPDF_ERR_FILE:
            raise ReadError("cannot be read (the file could not be opened)", "failed") from None
        raise ReadError("is not a readable PDF", "failed") from None

    # Pass 1, page by page: each page's lines with their font sizes, and a histogram of font sizes (by
    # characters) over the whole document, to tell body text from headings.
    pages: list[list[_PdfLine] | str | None] = []
    histogram: dict[float, int] = {}
    try:
        title = _pdf_title(pdf) or path.stem
        n = len(pdf)
        if n == 0:
            raise ReadError("is not a readable PDF (it has no pages)", "failed")
        for i in range(n):
            lines = _pdf_page_lines(pdf, i, pdfium, pdfium_c)
            if isinstance(lines, list):
                for line in lines:
                    if line.size:
                        histogram[line.size] = histogram.get(line.size, 0) + len(line.text)
            pages.append(lines)
    finally:
        pdf.close()

    # Pass 2: render each page as Markdown-like text, with page spans indexing the final text.
    levels = _pdf_heading_levels(pages, histogram)
    parts: list[str] = []
    spans: list[PageSpan] = []
    empty_pages: list[int] = []
    broken_pages: list[int] = []
    pos = 0
    for i, lines in enumerate(pages):
        if lines is None:
            broken_pages.append(i + 1)
            text = ""
        elif isinstance(lines, str):
            text = normalise_text(lines)
        else:
            text = normalise_text(_pdf_render(lines, levels))
        if not text.strip():
            empty_pages.append(i + 1)
            text = ""
        if parts and text:
            pos += 2  # the blank line between pages
        start = pos
        pos += len(text)
        spans.append(PageSpan(page=i + 1, char_start=start, char_end=pos))
        if text:
            parts.append(text)
        pages[i] = None  # let the page's lines go as soon as they are rendered

    if broken_pages and len(broken_pages) == len(spans):
        raise ReadError("is not a readable PDF (no page could be read)", "failed")
    if not parts:
        raise ReadError("has no text layer (a scanned PDF?): run OCR on it first", "skipped")
    notes = []
    if broken_pages:
        notes.append(f"{_count(len(broken_pages), 'page')} could not be read: {_page_list(broken_pages)}")
    blank = [p for p in empty_pages if p not in broken_pages]
    if blank:
        notes.append(f"{_count(len(blank), 'page')} had no text: {_page_list(blank)}")
    text = "\n\n".join(parts)
    assert len(text) == pos
    return ParsedDocument(title=title, kind="pdf", text=text, pages=spans, notes=notes)


def _pdf_page_lines(pdf: Any, index: int, pdfium: Any, pdfium_c: Any) -> list[_PdfLine] | str | None:
    """One page's lines, with the page and its text page closed again at once.

    None: the page is broken. A string: the page's plain text, where font sizes could not be matched to
    the text (characters outside the Basic Multilingual Plane shift pdfium's indices).
    """
    try:
        page = pdf[index]
    except pdfium.PdfiumError:
        return None
    try:
        textpage = page.get_textpage()
        try:
            return _pdf_textpage_lines(textpage, pdfium_c)
        finally:
            textpage.close()
    except pdfium.PdfiumError:
        return None
    finally:
        page.close()


def _pdf_textpage_lines(textpage: Any, pdfium_c: Any) -> list[_PdfLine] | str:
    import ctypes

    n = textpage.count_chars()
    if n <= 0:
        return ""
    text = textpage.get_text_range(0, n)
    if any(ord(ch) > 0xFFFF for ch in text):
        return textpage.get_text_bounded()
    raw = textpage.raw
    char_index = pdfium_c.FPDFText_GetCharIndexFromTextIndex
    font_size = pdfium_c.FPDFText_GetFontSize
    origin = pdfium_c.FPDFText_GetCharOrigin
    x, y = ctypes.c_double(), ctypes.c_double()

    found: list[tuple[str, float, float, float]] = []  # (text, font size, baseline y, right edge x)
    for m in re.finditer(r"[^\r\n]+", text):
        line = m.group().strip()
        if not line:
            continue
        start = m.start() + (len(m.group()) - len(m.group().lstrip()))
        last = start + len(line) - 1
        sizes = []
        for ti in (start, (start + last) // 2, last):
            ci = char_index(raw, ti)
            if ci >= 0 and not text[ti].isspace():
                sizes.append(font_size(raw, ci))
        sizes.sort()
        size = round(sizes[len(sizes) // 2] * 2) / 2 if sizes else 0.0
        base = right = 0.0
        ci = char_index(raw, start)
        if ci >= 0 and origin(raw, ci, x, y):
            base = y.value
        ci = char_index(raw, last)
        if ci >= 0 and origin(raw, ci, x, y):
            right = x.value
        found.append((line, size, base, right))

    gaps = sorted(a[2] - b[2] for a, b in itertools.pairwise(found) if a[2] - b[2] > 0)
    usual_gap = gaps[len(gaps) // 2] if gaps else 0.0
    widest = max((f[3] for f in found), default=0.0)
    out: list[_PdfLine] = []
    prev: tuple[str, float, float, float] | None = None
    for line, size, base, right in found:
        new_para = True
        if prev is not None:
            p_line, p_size, p_base, p_right = prev
            gap = p_base - base
            new_para = (
                gap <= 0  # a new column, or text placed out of order
                or (usual_gap > 0 and gap > 1.3 * usual_gap)  # extra space between the lines
                or abs(size - p_size) > 0.1 * max(size, p_size)  # another font size
                or (p_line.endswith(_SENTENCE_END) and p_right < 0.85 * widest)  # a short last line
            )
        out.append(_PdfLine(line, size, new_para))
        prev = (line, size, base, right)
    return out


def _pdf_heading_levels(pages: list[Any], histogram: dict[float, int]) -> dict[float, int]:
    """Font size -> heading level (1 for the largest), for the sizes that short lines use as headings."""
    if not histogram:
        return {}
    body = max(histogram.items(), key=lambda kv: (kv[1], -kv[0]))[0]
    sizes: set[float] = set()
    for lines in pages:
        if isinstance(lines, list):
            for line in lines:
                if _pdf_heading_candidate(line, body):
                    sizes.add(line.size)
    ranked = sorted(sizes, reverse=True)
    return {s: min(i + 1, HEADING_MAX_LEVELS) for i, s in enumerate(ranked)}


def _pdf_heading_candidate(line: _PdfLine, body: float) -> bool:
    return (
        body > 0
        and line.size >= HEADING_MIN_RATIO * body
        and len(line.text) < HEADING_MAX_CHARS
        and any(ch.isalpha() for ch in line.text)
    )


def _pdf_render(lines: list[_PdfLine], levels: dict[float, int]) -> str:
    """A page's lines as blocks: ``#`` heading lines, and paragraphs with their wrapped lines re-joined."""
    blocks: list[str] = []
    last_level = 0  # the heading level of the last block, 0 for a paragraph
    for line in lines:
        text = " ".join(line.text.split())
        level = levels.get(line.size, 0) if len(text) < HEADING_MAX_CHARS else 0
        if level:
            if blocks and last_level == level and not line.new_para:
                blocks[-1] += " " + text  # a heading wrapped over two lines
            else:
                blocks.append("#" * level + " " + text)
        elif blocks and not last_level and not line.new_para:
            blocks[-1] = _join_wrapped(blocks[-1], text)
        else:
            blocks.append(text)
        last_level = level
    return "\n\n".join(blocks)


def _join_wrapped(head: str, tail: str) -> str:
    """Re-join a line wrapped inside a paragraph: soft hyphens go, a hyphen before lower case stays unspaced."""
    if head.endswith(("\xad", "\x02")):
        return head[:-1] + tail
    if head.endswith("-") and len(head) > 1 and head[-2].isalpha() and tail[:1].islower():
        return head + tail
    return head + " " + tail


def _pdf_title(pdf: Any) -> str | None:
    try:
        title = (pdf.get_metadata_dict().get("Title") or "").strip()
    except Exception:
        return None
    return title or None


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _page_list(pages: list[int], limit: int = 10) -> str:
    shown = ", ".join(str(p) for p in pages[:limit])
    return shown + (f" and {len(pages) - limit} more" if len(pages) > limit else "")


# --- DOCX ---------------------------------------------------------------------------------------------


def check_zip(path: Path, max_bytes: int) -> None:
    """Refuse zip bombs from the central directory alone, before anything is decompressed."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError):
        raise ReadError("is not a valid Word document (not a zip file)", "failed") from None
    except OSError as e:
        raise ReadError(f"cannot be read ({e.strerror or e})", "failed") from None
    if len(infos) > ZIP_MAX_MEMBERS:
        raise ReadError(f"looks like a zip bomb ({len(infos)} files inside)", "failed")
    total = sum(i.file_size for i in infos)
    packed = sum(i.compress_size for i in infos)
    if total > ZIP_MAX_UNCOMPRESSED_FACTOR * max_bytes:
        raise ReadError(f"looks like a zip bomb ({_mb(total)} MB uncompressed)", "failed")
    if total > ZIP_RATIO_FLOOR and total > ZIP_MAX_RATIO * max(packed, 1):
        raise ReadError(f"looks like a zip bomb (compressed {total // max(packed, 1)}:1)", "failed")


def _read_docx(path: Path, max_bytes: int) -> ParsedDocument:
    check_zip(path, max_bytes)
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(str(path))
    except PackageNotFoundError:
        raise ReadError("is not a valid Word document", "failed") from None
    except (KeyError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ReadError(f"is not a readable Word document ({type(e).__name__})", "failed") from None
    except Exception as e:  # lxml's XMLSyntaxError and friends
        if type(e).__module__.startswith(("lxml", "docx")):
            raise ReadError(f"is not a readable Word document ({type(e).__name__})", "failed") from None
        raise

    blocks: list[str] = []
    first_heading: str | None = None
    for kind, item in _docx_blocks(document):
        if kind == "table":
            rows = _docx_table_rows(item)
            if rows:
                blocks.append("\n".join(rows))
            continue
        text = item.text.strip()
        if not text:
            continue
        style = _style_name(item)
        level = _heading_level(style)
        if level:
            blocks.append("#" * level + " " + " ".join(text.split()))
            first_heading = first_heading or text
        elif _is_list_item(item, style):
            blocks.append("- " + text)
        else:
            blocks.append(text)

    # List items of one list sit on consecutive lines; everything else is separated by a blank line.
    out: list[str] = []
    for block in blocks:
        if out and block.startswith("- ") and out[-1].split("\n")[-1].startswith("- "):
            out[-1] += "\n" + block
        else:
            out.append(block)
    try:
        title = (document.core_properties.title or "").strip()
    except Exception:
        title = ""
    return ParsedDocument(
        title=title or first_heading or path.stem, kind="docx", text=normalise_text("\n\n".join(out))
    )


def _docx_blocks(document: Any) -> Any:
    """The body's paragraphs and tables, in document order."""
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    body = document.element.body
    for child in body.iterchildren():
        tag = child.tag.rsplit("}", 1)[-1]
        if tag == "p":
            yield "p", Paragraph(child, document)
        elif tag == "tbl":
            yield "table", Table(child, document)
        elif tag == "sdt":  # content controls (e.g. a table of contents) wrap paragraphs
            for p in child.iter():
                if p.tag.rsplit("}", 1)[-1] == "p":
                    yield "p", Paragraph(p, document)


def _docx_table_rows(table: Any) -> list[str]:
    rows = []
    for row in table.rows:
        cells: list[str] = []
        last = None
        for cell in row.cells:
            if last is not None and cell._tc is last:  # a merged cell repeats itself
                continue
            last = cell._tc
            cells.append(" ".join(cell.text.split()))
        if any(cells):
            rows.append("| " + " | ".join(cells) + " |")
    return rows


def _style_name(paragraph: Any) -> str:
    try:
        return (paragraph.style.name or "") if paragraph.style is not None else ""
    except Exception:
        return ""


def _heading_level(style: str) -> int:
    if style == "Title":
        return 1
    m = re.fullmatch(r"Heading\s*(\d)", style, re.IGNORECASE)
    return min(6, max(1, int(m.group(1)))) if m else 0


def _is_list_item(paragraph: Any, style: str) -> bool:
    if style.startswith("List"):
        return True
    ppr = paragraph._p.pPr
    return ppr is not None and ppr.numPr is not None


# --- HTML ---------------------------------------------------------------------------------------------

_DROP_TAGS = ("script", "style", "nav", "noscript", "template", "iframe", "svg", "head", "form")


def _read_html(html: str, path: Path) -> ParsedDocument:
    from bs4 import BeautifulSoup
    from markdownify import ATX, MarkdownConverter

    soup = BeautifulSoup(html, "html.parser")
    title = ""
    if soup.title is not None:
        title = " ".join(soup.title.get_text().split())
    for tag in soup.find_all(_DROP_TAGS):
        tag.decompose()
    text = MarkdownConverter(heading_style=ATX, bullets="-", strip=["img"]).convert_soup(soup)
    text = normalise_text(text)
    return ParsedDocument(title=title or _md_title(text) or path.stem, kind="html", text=text)
